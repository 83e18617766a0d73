"""FasterTransformer (NVIDIA): request-level static batching.

Reproduces: when the replica is idle, up to `max_batch_size` waiting requests (FCFS) form a batch, all
prefilled together in one iteration and then decoded together; no request joins until every request of
the batch has finished, so short requests wait for the longest one and new arrivals queue behind the
whole batch. KV memory for each request's full length is reserved up front. Simplification: a request
that finishes early leaves the batch's compute (real FasterTransformer keeps computing padded rows), so
our iterations late in a batch are slightly optimistic.
"""
from __future__ import annotations

from policies.base import POLICIES, Batch
from policies.orca import Orca


class FasterTransformer(Orca):
    """Orca's admission (FCFS, full-length KV reserved), but only when the previous batch has finished."""

    def schedule(self, now_s: float) -> Batch | None:
        if self.running:  # static batching: nobody joins until the whole batch is done
            return self.running_batch()
        return super().schedule(now_s)


POLICIES["faster_transformer"] = FasterTransformer
