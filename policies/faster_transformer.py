"""FasterTransformer (NVIDIA): request-level static batching.

Reproduces: when the replica is idle, up to `max_batch_size` waiting requests (FCFS) form a batch, all
prefilled together in one iteration and then decoded together; no request joins until every request of
the batch has finished, so short requests wait for the longest one and new arrivals queue behind the
whole batch. KV memory for each request's full length is reserved up front. Simplification: a request
that finishes early leaves the batch's compute (real FasterTransformer keeps computing padded rows), so
our iterations late in a batch are slightly optimistic.
"""
from __future__ import annotations

import numpy as np

from policies.base import POLICIES, Batch, Policy


class FasterTransformer(Policy):
    def __init__(self, kv, requests, max_batch_size: int = 16):
        super().__init__(kv, requests)
        self.max_batch_size = max_batch_size

    def schedule(self, now_s: float) -> Batch | None:
        req = self.requests
        if not self.running:  # the previous batch has fully finished: form the next one
            while self.waiting and len(self.running) < self.max_batch_size:
                r = self.waiting[0]
                if not self.admit(r, int(req.prompt_tokens[r] + req.output_tokens[r])):
                    break
        if not self.running:
            return None
        running = np.array(self.running, dtype=np.int64)
        return Batch(running, req.pending_tokens_of(running))


POLICIES["faster_transformer"] = FasterTransformer
