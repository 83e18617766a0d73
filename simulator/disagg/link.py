"""A KV-transfer link whose concurrent transfers share its bandwidth fairly (processor sharing).

Why fair share and not FIFO (one simpy Resource slot per link): concurrent RDMA / NCCL / NVLink copies
interleave their packets on the wire, so n transfers in flight each progress at bandwidth / n; none waits
for another to finish. FIFO would finish the first transfer early and the rest later, which understates
the second token's delay of every request but the first. The total time to drain a burst is the same
under both, so a saturated link shows up as queueing either way.

A transfer that ends exactly when an iteration ends is seen by that instant's scheduling decision: the
link's timers and completions are urgent events (processed before ordinary events at the same time), as
arrivals are (simulator/cluster.py). Stepping decodes one at a time and advancing runs of them in one step
then agree.

The link only moves bytes: the fixed per-transfer latency is added by the caller (it does not occupy
the bandwidth). Times are integer nanoseconds, like the rest of the simulator; a transfer ends at the
first whole nanosecond at which its bytes are through.
"""
from __future__ import annotations

import math

import simpy
from simpy.core import URGENT

from simulator.cluster import _ArrivalTimeout as _UrgentTimeout


class FairShareLink:
    """One link of `bandwidth_bytes_per_s`. `send(num_bytes)` is a SimPy process body (yield from it)."""

    def __init__(self, env: simpy.Environment, bandwidth_bytes_per_s: float):
        if not bandwidth_bytes_per_s > 0:
            raise ValueError(f"link bandwidth must be positive, got {bandwidth_bytes_per_s} bytes/s")
        self.env = env
        self.bytes_per_ns = bandwidth_bytes_per_s / 1e9
        self._active: list[list] = []  # [remaining_bytes, done event] of each transfer in flight
        self._last_update_ns = 0
        self._timer_generation = 0  # a timer set before the last change of the active set is stale
        self.busy_ns = 0  # time with at least one transfer in flight
        self.bytes_sent = 0.0
        self.transfers = 0
        self.max_concurrent = 0

    def send(self, num_bytes: float):
        """Move `num_bytes` over the link, sharing it with every other transfer in flight."""
        if num_bytes <= 0:
            return
        self._advance()
        done = self.env.event()
        self._active.append([float(num_bytes), done])
        self.transfers += 1
        self.bytes_sent += num_bytes
        self.max_concurrent = max(self.max_concurrent, len(self._active))
        self._set_timer()
        yield done

    def _advance(self) -> None:
        """Take the bytes moved since the last change off every transfer in flight (equal shares)."""
        now = self.env.now
        elapsed = now - self._last_update_ns
        if self._active and elapsed > 0:
            moved = elapsed * self.bytes_per_ns / len(self._active)
            for transfer in self._active:
                transfer[0] -= moved
            self.busy_ns += elapsed
        self._last_update_ns = now

    def _set_timer(self) -> None:
        """Wake up when the smallest transfer in flight is through (at the current share)."""
        self._timer_generation += 1
        if not self._active:
            return
        smallest = min(t[0] for t in self._active)
        delay_ns = max(math.ceil(smallest * len(self._active) / self.bytes_per_ns - 1e-9), 0)
        generation = self._timer_generation
        _UrgentTimeout(self.env, delay_ns).callbacks.append(lambda _event: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._timer_generation:
            return
        self._advance()
        # Done: less than one nanosecond of work left at the current share (rounding of whole ns).
        threshold = self.bytes_per_ns / len(self._active)
        finished = [t for t in self._active if t[0] < threshold]
        self._active = [t for t in self._active if t[0] >= threshold]
        for _remaining, done in finished:
            done._ok, done._value = True, None  # done.succeed(), at urgent priority
            self.env.schedule(done, URGENT)
        self._set_timer()
