"""SGLang's scheduler (python/sglang/srt/managers/scheduler.py and schedule_policy.py, v0.5) with its
radix cache.

Reproduces: each step first tries to form a prefill batch: the request whose prompt is part-way through
chunked prefill continues, then waiting requests join in `schedule_policy` order, fcfs (arrival) or lpm
(longest cached prefix first; SGLang falls back to fcfs when more than 128 wait), each with its cached
prefix (simulator/radix_cache.py) and as much of the rest as `chunked_prefill_size` tokens allow; the
one that does not fit whole runs in chunks, one chunked request at a time. Admission stops at
`max_running_requests` or when the KV cache cannot hold the prompt. A prefill batch runs alone, unless
`enable_mixed_chunk` puts the running decodes in it (they then take budget first, as SGLang's
PrefillAdder does). With no prefill to run, every running request decodes one token.

Defaults: chunked_prefill_size by GPU memory as SGLang's ServerArgs sets it (8192 on 60-160 GiB GPUs:
H100, H200, A100 80GB; 4096 below 60 GiB, 2048 below 35 GiB, 16384 above), fcfs, no mixed chunks,
max_running_requests 4096 (what SGLang derives for an 8B model on an H100: its request pool is
clamp(KV tokens / context length x 512, 2048, 4096)).
When decodes run out of KV blocks, the request with the fewest output tokens (the longest prompt among
those, then the newest) is preempted by recompute, as SGLang's retract_decode chooses.
Approximations: SGLang allocates KV per chunk and admits a request when its prompt and an estimate of
the running requests' future output fit (new_token_ratio); we take the whole prompt's blocks at
admission and keep the cluster's watermark free instead (nor is the estimate raised after a retraction).
"""
from __future__ import annotations

from policies.base import POLICIES, Batch, Parameter, Policy
from simulator.config import HardwareConfig
from simulator.radix_cache import RadixCache

LPM_MAX_WAITING = 128  # SGLang's schedule_policy.py: above this queue length lpm costs too much; fcfs


class SGLang(Policy):
    parameters = (
        Parameter("chunked_prefill_size", "prefill tokens per step"),
        Parameter("max_running_requests", "running requests at most"),
        Parameter("schedule_policy", "order of waiting requests", type=str, choices=("fcfs", "lpm")),
        Parameter("enable_mixed_chunk", "run decodes in the prefill batch", type=bool),
        Parameter("enable_prefix_caching", "keep the radix cache (SGLang's --disable-radix-cache off)",
                  type=bool),
    )

    def __init__(self, kv, requests, chunked_prefill_size: int = 8192, max_running_requests: int = 4096,
                 schedule_policy: str = "fcfs", enable_mixed_chunk: bool = False,
                 enable_prefix_caching: bool = True):
        super().__init__(kv, requests)
        self.chunked_prefill_size = chunked_prefill_size
        self.max_running_requests = max_running_requests
        self.schedule_policy = schedule_policy
        self.enable_mixed_chunk = enable_mixed_chunk
        if enable_prefix_caching:
            self.use_prefix_cache(RadixCache)
        self.chunked: int | None = None  # the request part-way through its prefill
        # Ordered by cached prefix, the waiting queue may reorder as decodes evict cached blocks.
        self._lpm_order_may_change = schedule_policy == "lpm" and isinstance(self.kv, RadixCache)

    @classmethod
    def hardware_defaults(cls, hardware: HardwareConfig) -> dict:
        """SGLang's chunked_prefill_size for the GPU's memory (ServerArgs)."""
        gib = hardware.memory_gib
        size = 2048 if gib < 35 else 4096 if gib < 60 else 8192 if gib < 160 else 16384
        return {"chunked_prefill_size": size}

    def waiting_order(self) -> list[int]:
        """Waiting requests in the order they are offered a place: arrival, or longest cached prefix."""
        if self.schedule_policy == "lpm" and len(self.waiting) <= LPM_MAX_WAITING:
            hit = self.kv.prefix_hit_tokens
            return sorted(self.waiting, key=lambda r: -hit(r))  # stable: arrival order among equals
        return list(self.waiting)

    def schedule(self, now_s: float) -> Batch | None:
        requests = self.requests
        decoding = [r for r, n in zip(self.running, requests.pending_tokens_of(self.running))
                    if n == 1 and r != self.chunked]
        ids, tokens = [], []
        budget = self.chunked_prefill_size
        if self.enable_mixed_chunk:
            ids = self.schedule_decodes(decoding)
            tokens = [1] * len(ids)
            budget -= len(ids)

        # The prefill batch: the chunked request first, then new ones.
        prefills = 0
        if self.chunked is not None and budget > 0:
            r = self.chunked
            n = min(requests.pending_tokens(r), budget)
            ids.append(r), tokens.append(n)
            budget -= n
            prefills += 1
            if n == requests.pending_tokens(r):
                self.chunked = None
                # It joins the decoding batch only now, and the waiting requests get their turn next step:
                # a change, so that the replica does not take this step for the start of a run of decodes
                # (a recomputing request's last prompt token looks like a decode).
                self.num_other_changes += 1
        if self.chunked is None:
            for r in self.waiting_order():
                if budget <= 0 or len(self.running) >= self.max_running_requests:
                    break
                if not self.admit(r, requests.pending_tokens(r)):
                    break
                need = requests.pending_tokens(r)  # less the cached prefix
                n = min(need, budget)
                ids.append(r), tokens.append(n)
                budget -= n
                prefills += 1
                if n < need:
                    self.chunked = r
                    break
        if not prefills and self.waiting and self._lpm_order_may_change:
            # Decodes alone: the blocks they take evict cached ones, which may put another waiting request
            # at the head of the order, one that fits, so the next step must be scheduled, not run on.
            self.num_other_changes += 1
        if prefills or self.enable_mixed_chunk:
            return Batch.of(ids, tokens)

        # No prefill: every running request decodes (preempting as preemption_victim says if blocks run out).
        decodes = self.schedule_decodes(decoding)
        return Batch.of(decodes, [1] * len(decodes))

    def preemption_victim(self) -> int:
        # retract_decode's order: fewest output tokens, then longest prompt; the newest among equals. The
        # request part-way through its prefill is not in SGLang's running batch.
        generated, prompt = self.requests.ints.generated_tokens, self.requests.ints.prompt_tokens
        batch = [r for r in reversed(self.running) if r != self.chunked] or self.running[-1:]
        return min(batch, key=lambda r: (generated[r], -prompt[r]))

    def preempt(self, request_id: int) -> None:
        super().preempt(request_id)
        if request_id == self.chunked:  # it starts over from the waiting queue
            self.chunked = None


POLICIES["sglang"] = SGLang
