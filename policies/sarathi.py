"""Sarathi-Serve (Agrawal et al., OSDI 2024): chunked prefills under a token budget, stall-free batching.

Reproduces: every iteration spends at most `chunk_size` tokens, first one token for each running decode
(decodes never stall behind a long prompt), then the next chunk of prefills already in progress, then
chunks of new requests in FCFS order, with at most `max_batch_size` requests per batch. A new request's
KV blocks for its whole prompt are taken when it is admitted (Sarathi-Serve's block manager does this);
decodes grow one block at a time and preempt the newest request by recompute when blocks run out.
Defaults: chunk 512 and batch cap 128, the paper's strict-SLO setting (2048 for relaxed SLOs).
`enable_prefix_caching` (off by default) reuses cached prompt blocks (simulator/prefix_cache.py); blocks
are cached when allocated, so a prompt taken whole at admission is findable before all its chunks ran.
"""
from __future__ import annotations

from policies.base import POLICIES, Batch, Parameter, Policy
from simulator.prefix_cache import PrefixCachingKV


class SarathiServe(Policy):
    parameters = (
        Parameter("chunk_size", "token budget per iteration: decodes plus prefill chunks"),
        Parameter("max_batch_size", "requests per batch"),
        Parameter("enable_prefix_caching", "reuse cached prompt blocks", type=bool),
    )

    def __init__(self, kv, requests, chunk_size: int = 512, max_batch_size: int = 128,
                 enable_prefix_caching: bool = False):
        super().__init__(kv, requests)
        if enable_prefix_caching:
            self.use_prefix_cache(PrefixCachingKV)
        self.chunk_size = chunk_size
        self.max_batch_size = max_batch_size

    def schedule(self, now_s: float) -> Batch | None:
        budget, cap = self.chunk_size, self.max_batch_size
        pending = self.requests.pending_tokens_of(self.running)
        in_progress = [(r, n) for r, n in zip(self.running, pending) if n > 1]  # prefills already started

        # 1. Running decodes first, one token each (preempting the newest requests if blocks run out).
        num_running = len(self.running)
        decoding = [r for r, n in zip(self.running, pending) if n == 1]
        decodes = self.schedule_decodes(decoding[: min(budget, cap)])
        if len(self.running) < num_running:  # some were preempted
            still_running = set(self.running)
            in_progress = [(r, n) for r, n in in_progress if r in still_running]
        ids, tokens = decodes, [1] * len(decodes)
        budget -= len(decodes)

        # 2. The next chunk of prefills already in progress, in admission order.
        for r, n in in_progress:
            if budget == 0 or len(ids) == cap:
                break
            ids.append(r), tokens.append(min(n, budget))
            budget -= tokens[-1]

        # 3. New requests (and preempted ones, recomputing), FCFS, while budget and KV blocks last.
        while self.waiting and budget > 0 and len(ids) < cap:
            r = self.waiting[0]
            need = self.requests.pending_tokens(r)
            if not self.admit(r, need):
                break
            need = self.requests.pending_tokens(r)  # less what a prefix cache held
            ids.append(r), tokens.append(min(need, budget))
            budget -= tokens[-1]
        return Batch.of(ids, tokens)


POLICIES["sarathi"] = SarathiServe
