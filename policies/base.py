"""What every scheduling policy shares: the Batch it returns, the Policy base class, the registry.

A policy is a plain object. The replica hands it arriving requests (`add_request`), asks it for the next
batch (`schedule`), and tells it which requests finished (`finish`). It decides; it never advances time
or computes tokens, so the same object could drive a real GPU executor. Memory goes through the shared
`KVCache`; per-request progress lives in the `RequestState` arrays (see simulator/request.py):

    requests.pending_tokens(r)   tokens r must compute before its next token (its prompt, the rest of a
                                 chunked prompt, prompt + generated after a preemption, or 1 when decoding)
    requests.computed_tokens[r]  tokens of r already in the KV cache

A new policy is one module in this package that subclasses Policy, implements `schedule`, and adds
itself to POLICIES; docs/policies.md walks through one.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from simulator.kv_cache import KVCache
from simulator.request import RequestState, int_list


@dataclass
class Batch:
    """One iteration's work: request i computes num_tokens[i] tokens (a prefill chunk, or 1 to decode).

    Plain lists of ints: batches hold a handful of requests, and the replica reads them one by one.
    """

    request_ids: list[int]
    num_tokens: list[int]  # same length

    @classmethod
    def of(cls, request_ids, num_tokens) -> Batch | None:
        """A batch from two lists (or int arrays), copied; None when they are empty (nothing to run)."""
        if len(request_ids) == 0:
            return None
        return cls(list(int_list(request_ids)), list(int_list(num_tokens)))

    def __len__(self) -> int:
        return len(self.request_ids)


class Policy:
    """Base class: FCFS `waiting` queue, `running` list in admission order, preemption by recompute.

    Subclasses set their parameters in __init__ (after calling super().__init__(kv, requests)) and
    implement `schedule`.
    """

    # True when, as long as nothing arrives, finishes or runs out of KV blocks, a decode-only batch from
    # `schedule` would be chosen again next iteration. The replica then advances such runs of decodes in
    # one step. Set False in a policy whose choices depend on the clock.
    fast_forward_decodes = True

    def __init__(self, kv: KVCache, requests: RequestState):
        self.kv = kv
        self.requests = requests
        self.waiting: deque[int] = deque()
        self.running: list[int] = []

    def add_request(self, request_id: int) -> None:
        """A request routed to this scheduler joins the back of the waiting queue."""
        self.waiting.append(request_id)

    def schedule(self, now_s: float) -> Batch | None:
        """The batch to run next, or None if there is nothing to do. Allocates KV for it."""
        raise NotImplementedError

    def finish(self, request_ids) -> None:
        """These running requests (a list or an int array) emitted their last token; the replica has
        freed their KV blocks."""
        done = set(int_list(request_ids))
        self.running = [r for r in self.running if r not in done]

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # --- helpers shared by several policies -------------------------------------------------------

    def admit(self, request_id: int, num_tokens: int) -> bool:
        """Move a waiting request to the back of `running` if the KV cache can hold `num_tokens` for it
        (keeping the watermark free); False and no change otherwise."""
        if not self.kv.allocate(request_id, num_tokens, admission=True):
            return False
        self.waiting.remove(request_id)  # O(1) for the head of the queue, the usual case
        self.running.append(request_id)
        return True

    def preempt(self, request_id: int) -> None:
        """Preempt by recompute: drop the request's KV and put it at the front of `waiting`. It keeps the
        tokens it has emitted and will recompute prompt + generated tokens when scheduled again."""
        self.kv.free([request_id])
        self.requests.computed_tokens[request_id] = 0
        self.requests.preemptions[request_id] += 1
        self.running.remove(request_id)
        self.waiting.appendleft(request_id)

    def schedule_decodes(self, candidates: list[int]) -> list[int]:
        """Reserve one more KV slot for each candidate (running requests, in priority order).

        When blocks run out, preempt the lowest-priority running request (the back of `running`, as vLLM
        does) and retry; a candidate that is itself the lowest is preempted. Returns the candidates that
        got their slot, in order.
        """
        computed = self.requests.ints.computed_tokens
        if self.kv.allocate_all(candidates, [computed[r] + 1 for r in candidates]):
            return list(candidates)  # the common case: everyone fits
        scheduled, preempted = [], set()
        for r in candidates:
            if r in preempted:
                continue
            while not self.kv.allocate(r, computed[r] + 1):
                victim = self.running[-1]
                self.preempt(victim)
                preempted.add(victim)
                if victim in scheduled:  # only if candidates were not in running order
                    scheduled.remove(victim)
                if victim == r:
                    break
            else:
                scheduled.append(r)
        return scheduled


POLICIES: dict[str, type[Policy]] = {}  # name -> class, filled by each policy module
