"""Sarathi-Serve (Agrawal et al., OSDI 2024): chunked prefills under a token budget, stall-free batching.

Reproduces: every iteration spends at most `chunk_size` tokens, first one token for each running decode
(decodes never stall behind a long prompt), then the next chunk of prefills already in progress, then
chunks of new requests in FCFS order, with at most `max_batch_size` requests per batch. A new request's
KV blocks for its whole prompt are taken when it is admitted (Sarathi-Serve's block manager does this);
decodes grow one block at a time and preempt the newest request by recompute when blocks run out.
Defaults: chunk 512 and batch cap 128, the paper's strict-SLO setting (2048 for relaxed SLOs).
"""
from __future__ import annotations

import numpy as np

from policies.base import POLICIES, Batch, Policy


class SarathiServe(Policy):
    def __init__(self, kv, requests, chunk_size: int = 512, max_batch_size: int = 128):
        super().__init__(kv, requests)
        self.chunk_size = chunk_size
        self.max_batch_size = max_batch_size

    def schedule(self, now_s: float) -> Batch | None:
        budget, cap = self.chunk_size, self.max_batch_size
        running = np.array(self.running, dtype=np.int64)
        pending = dict(zip(self.running, self.requests.pending_tokens_of(running).tolist()))

        # 1. Running decodes first, one token each.
        decodes = self.schedule_decodes([r for r in self.running if pending[r] == 1][: min(budget, cap)])
        ids, tokens = list(decodes), [1] * len(decodes)
        budget -= len(decodes)

        # 2. The next chunk of prefills already in progress, in admission order.
        for r in self.running:
            if budget == 0 or len(ids) == cap:
                break
            if pending[r] > 1:
                chunk = min(pending[r], budget)
                ids.append(r), tokens.append(chunk)
                budget -= chunk

        # 3. New requests (and preempted ones, recomputing), FCFS, while budget and KV blocks last.
        while self.waiting and budget > 0 and len(ids) < cap:
            r = self.waiting[0]
            need = self.requests.pending_tokens(r)
            if not self.admit(r, need):
                break
            chunk = min(need, budget)
            ids.append(r), tokens.append(chunk)
            budget -= chunk
        return Batch.of(ids, tokens)


POLICIES["sarathi"] = SarathiServe
