"""vLLM's default scheduler without chunked prefill (Kwon et al., SOSP 2023; vLLM v0 `_schedule_default`).

Reproduces: prefills first. Waiting requests are admitted in FCFS order, each prefilled whole, while the
batch stays within `max_num_batched_tokens` tokens, `max_num_seqs` running sequences and the free KV
blocks (minus the watermark); if any was admitted the iteration is prefill-only and running decodes
pause. Otherwise every running request decodes one token; when the paged KV cache runs out of blocks
the newest running request is preempted by recompute (its KV dropped, recomputed later from prompt +
generated tokens). Defaults: max_num_seqs 256 and max_num_batched_tokens max(max_model_len, 2048),
vLLM v0's values with chunked prefill off. `enable_prefix_caching` (off by default, as in v0) reuses
cached prompt blocks (simulator/prefix_cache.py; v0's own block manager hashes blocks the same way).
"""
from __future__ import annotations

from policies.base import POLICIES, Batch, Parameter, Policy
from simulator.prefix_cache import PrefixCachingKV


class VLLMv0(Policy):
    parameters = (
        Parameter("max_num_seqs", "running sequences at most"),
        Parameter("max_num_batched_tokens", "tokens per prefill iteration at most",
                  at_least_max_model_len="without chunked prefill a longer prompt would never run"),
        Parameter("enable_prefix_caching", "reuse cached prompt blocks", type=bool),
    )

    def __init__(self, kv, requests, max_num_seqs: int = 256, max_num_batched_tokens: int | None = None,
                 enable_prefix_caching: bool = False):
        super().__init__(kv, requests)
        if enable_prefix_caching:
            self.use_prefix_cache(PrefixCachingKV)
        self.max_num_seqs = max_num_seqs
        # None (not set) takes vLLM v0's default; any value set was checked by check_parameters.
        self.max_num_batched_tokens = (max(requests.max_model_len, 2048) if max_num_batched_tokens is None
                                       else max_num_batched_tokens)

    def schedule(self, now_s: float) -> Batch | None:
        # 1. Prefills first: admit waiting requests in order while tokens, sequences and blocks allow.
        ids, tokens, budget = [], [], self.max_num_batched_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            r = self.waiting[0]
            pending = self.requests.pending_tokens(r)
            need = pending - self.kv.prefix_hit_tokens(r)  # cached prompt tokens cost no budget
            if need > budget or not self.admit(r, pending):
                break
            ids.append(r), tokens.append(need)
            budget -= need
        if ids:
            return Batch.of(ids, tokens)

        # 2. No prefill: every running request decodes, preempting the newest when blocks run out.
        decodes = self.schedule_decodes(list(self.running))
        return Batch.of(decodes, [1] * len(decodes))


POLICIES["vllm"] = VLLMv0
