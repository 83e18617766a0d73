"""Orca (Yu et al., OSDI 2022): iteration-level scheduling with whole prefills.

Reproduces: a batch of at most `max_batch_size` requests is re-formed every iteration. New requests join
(FCFS) as soon as a slot frees up, and their whole prompt is computed in the same iteration as the other
requests' decodes, so a long prompt stalls every decode in the batch for that iteration. Orca reserves KV
memory for a request's maximum length when admitting it (we reserve prompt + output tokens), so it never
preempts. Default batch cap 16, the Orca baseline Sarathi-Serve runs for Mistral-7B.
"""
from __future__ import annotations

from policies.base import POLICIES, Batch, Parameter, Policy


class Orca(Policy):
    parameters = (Parameter("max_batch_size", "requests per batch"),)
    reserves_full_length = True  # admission takes prompt + output tokens; decodes allocate nothing

    def __init__(self, kv, requests, max_batch_size: int = 16):
        super().__init__(kv, requests)
        self.max_batch_size = max_batch_size

    def schedule(self, now_s: float) -> Batch | None:
        req = self.requests
        while self.waiting and len(self.running) < self.max_batch_size:
            r = self.waiting[0]
            if not self.admit(r, int(req.prompt_tokens[r] + req.output_tokens[r])):
                break
        return self.running_batch()

    def running_batch(self) -> Batch | None:
        """Every running request computes all its pending tokens (whole prefills, or one decode)."""
        return Batch.of(self.running, self.requests.pending_tokens_of(self.running))


POLICIES["orca"] = Orca
