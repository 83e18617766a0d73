"""vLLM's V1 scheduler (vllm/v1/core/sched/scheduler.py), with automatic prefix caching; checked decision by
decision against vLLM 0.33.0's own scheduler (bench/vllm_v1_decisions.py, docs/policies.md).

Reproduces one step of `Scheduler.schedule`: a single budget of `max_num_batched_tokens` tokens. Running
requests go first, in admission order: a decoding request takes one token, one still in prefill the next
chunk of its prompt (capped by `long_prefill_token_threshold` when > 0 and more than one request is running
or waiting) as far as the budget goes. KV blocks are allocated per step for the tokens scheduled; when they
run out, the most recently admitted running request is preempted by recompute (back to the front of the
waiting queue) until the allocation fits or the request itself was the one preempted. Then, if nobody was
preempted this step, waiting requests are admitted in arrival order while the budget, `max_num_seqs` and
the free blocks allow, each with its cached prefix (prefix caching is on by default,
`enable_prefix_caching`) and a chunk of the rest; with `scheduler_reserve_full_isl` (vLLM's default) only
if the free blocks could hold its whole sequence, though only the chunk's blocks are taken.

Defaults are vLLM's for the API server (EngineArgs._set_default_args): 8192 tokens and 1024 sequences on
GPUs with at least 70 GiB that are not A100s (H100, H200), 2048 and 256 otherwise; the policy takes them
from the configured hardware (`hardware_defaults`), and these class defaults are the H100's.
V1 keeps no free-block watermark at admission (v0's 1 %), so neither does this policy.

With `async_scheduling` (vLLM's engine default: its AsyncScheduler, step n + 1 scheduled while step n
runs) a request that finished at step n is known to have finished only after step n + 1 is scheduled:
it keeps its blocks and its place in `running` through that scheduling (nothing is scheduled for it), so
an admission waiting for its blocks comes a step later. The default follows the engine profile
(`engine_defaults`).
"""
from __future__ import annotations

from policies.base import POLICIES, Batch, Parameter, Policy
from simulator.config import HardwareConfig
from simulator.engine import EngineProfile
from simulator.prefix_cache import PrefixCachingKV
from simulator.request import int_list


class VLLMv1(Policy):
    parameters = (
        Parameter("max_num_batched_tokens", "token budget per step: decodes plus prefill chunks"),
        Parameter("max_num_seqs", "running sequences at most"),
        Parameter("long_prefill_token_threshold", "prefill tokens one request takes per step, 0 = no cap",
                  minimum=0),
        Parameter("enable_prefix_caching", "reuse cached prompt blocks", type=bool),
        Parameter("scheduler_reserve_full_isl", "admit a waiting request only if its whole sequence fits in "
                  "the free KV blocks, not just its first chunk", type=bool),
        Parameter("async_scheduling", "schedule each step before the previous step's tokens are known, as "
                  "vLLM's engine does by default", type=bool),
    )

    def __init__(self, kv, requests, max_num_batched_tokens: int = 8192, max_num_seqs: int = 1024,
                 long_prefill_token_threshold: int = 0, enable_prefix_caching: bool = True,
                 scheduler_reserve_full_isl: bool = True, async_scheduling: bool = False):
        super().__init__(kv, requests)
        self.async_scheduling = async_scheduling
        self._finishing: list[int] = []  # finished at the last step, not yet known to be (async_scheduling)
        self.scheduler_reserve_full_isl = scheduler_reserve_full_isl
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.long_prefill_token_threshold = long_prefill_token_threshold
        if enable_prefix_caching:
            self.use_prefix_cache(PrefixCachingKV)

    @classmethod
    def hardware_defaults(cls, hardware: HardwareConfig) -> dict:
        """vLLM's API-server defaults for this GPU: larger ones on GPUs of 70 GiB or more but A100s."""
        if hardware.memory_gib >= 70 and "a100" not in hardware.gpu_name.lower():
            return {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
        return {"max_num_batched_tokens": 2048, "max_num_seqs": 256}

    @classmethod
    def engine_defaults(cls, engine: EngineProfile) -> dict:
        """Scheduling a step ahead when the engine does (conf/engine: vllm_v1's AsyncScheduler)."""
        return {"async_scheduling": engine.async_scheduling}

    def release(self, request_ids) -> None:
        """Policy.release; with async scheduling, one scheduling late: vLLM's engine schedules step n + 1
        before it reads step n's sampled tokens, so a request that finished at step n still holds its blocks
        and its place in `running` (skipped: it is known to need no more tokens) while step n + 1 is
        scheduled, and its blocks are free from step n + 2 on."""
        if self.async_scheduling:
            self._finishing += int_list(request_ids)
        else:
            super().release(request_ids)

    def _release_late(self, request_ids: list[int]) -> None:
        """Free requests that finished at an earlier step (async scheduling)."""
        self._finishing = [r for r in self._finishing if r not in request_ids]
        super().release(request_ids)
        if self.waiting:  # the blocks may admit one next step: the replica must not skip that scheduling
            self.num_other_changes += 1

    def _chunk(self, pending: int, budget: int, threshold: int) -> int:
        if 0 < threshold < pending:
            pending = threshold
        return min(pending, budget)

    def schedule(self, now_s: float) -> Batch | None:
        requests, kv = self.requests, self.kv
        computed = requests.ints.computed_tokens
        budget = self.max_num_batched_tokens
        ids, tokens = [], []
        # The long-prefill cap keeps one prompt from starving the others: alone, a request is not capped.
        threshold = self.long_prefill_token_threshold if len(self.running) + len(self.waiting) > 1 else 0

        # 1. Running requests, in admission order: a decode token or the next prefill chunk each.
        preempted = False
        index = 0
        finishing = self._finishing
        while index < len(self.running) and budget > 0:
            r = self.running[index]
            if finishing and r in finishing:
                index += 1
                continue
            n = self._chunk(requests.pending_tokens(r), budget, threshold)
            while not kv.allocate(r, computed[r] + n):
                victim = self.running[-1]  # the newest; never one scheduled already (they are in front)
                if finishing and victim in finishing:  # done already: its blocks go back without a recompute
                    self._release_late([victim])
                    finishing = self._finishing
                    continue
                self.preempt(victim)
                preempted = True
                if victim == r:
                    break
            else:
                ids.append(r), tokens.append(n)
                budget -= n
                index += 1
                continue
            break

        # 2. Waiting requests in arrival order (preempted ones first), unless this step preempted.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            r = self.waiting[0]
            pending = requests.pending_tokens(r)
            if self.scheduler_reserve_full_isl and not kv.could_hold(r, computed[r] + pending):
                break
            cached = kv.prefix_hit_tokens(r)
            n = self._chunk(pending - cached, budget, threshold)
            if not self.admit(r, cached + n, watermark=False):
                break
            ids.append(r), tokens.append(n)
            budget -= n
        batch = Batch.of(ids, tokens)
        if self._finishing:  # the engine now reads the last step's tokens (async scheduling)
            self._release_late(self._finishing)
            if batch is None:  # with nothing to run, it reads them at once and schedules again
                return self.schedule(now_s)
        return batch


POLICIES["vllm_v1"] = VLLMv1
