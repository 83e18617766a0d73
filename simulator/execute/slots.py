"""Where each request's KV cache lives on the device: one contiguous token range (a slot) per request.

A request gets a slot of `prompt + output` tokens the first time it runs (its longest possible length,
so a slot never moves or grows) and gives it back when it finishes or is preempted. Slots are carved out
of one token buffer per layer by first fit; freed ranges merge with their free neighbours.

The policies' own block accounting (simulator.kv_cache.KVCache) still decides admission and preemption,
exactly as in the simulator; the slots only say where the real K and V go.
"""
from __future__ import annotations

import bisect


class SlotsFull(RuntimeError):
    """No free range is long enough for a request's slot."""


class SlotAllocator:
    """First-fit allocation of contiguous token ranges in [0, capacity_tokens)."""

    def __init__(self, capacity_tokens: int):
        if capacity_tokens < 1:
            raise ValueError(f"capacity_tokens={capacity_tokens} must be at least 1")
        self.capacity_tokens = capacity_tokens
        self._free_starts = [0]  # sorted starts of free ranges
        self._free_sizes = {0: capacity_tokens}  # start -> length of each free range
        self.used_tokens = 0

    def allocate(self, num_tokens: int) -> int:
        """Start of a new range of `num_tokens` tokens (the lowest free one that fits)."""
        if num_tokens < 1:
            raise ValueError(f"a slot needs at least one token, got {num_tokens}")
        for start in self._free_starts:
            size = self._free_sizes[start]
            if size < num_tokens:
                continue
            self._free_starts.remove(start)
            del self._free_sizes[start]
            if size > num_tokens:
                rest = start + num_tokens
                bisect.insort(self._free_starts, rest)
                self._free_sizes[rest] = size - num_tokens
            self.used_tokens += num_tokens
            return start
        raise SlotsFull(
            f"no free KV slot of {num_tokens} tokens: {self.used_tokens} of {self.capacity_tokens} tokens "
            f"in use, largest free range {max(self._free_sizes.values(), default=0)}")

    def free(self, start: int, num_tokens: int) -> None:
        """Give back the range [start, start + num_tokens), merging it with free neighbours."""
        i = bisect.bisect_left(self._free_starts, start)
        end = start + num_tokens
        freed = num_tokens
        if i < len(self._free_starts) and self._free_starts[i] < end:
            raise ValueError(f"range [{start}, {end}) overlaps a free range: freed twice?")
        if i > 0:
            before = self._free_starts[i - 1]
            if before + self._free_sizes[before] > start:
                raise ValueError(f"range [{start}, {end}) overlaps a free range: freed twice?")
            if before + self._free_sizes[before] == start:  # merge with the range just below
                start = before
                num_tokens += self._free_sizes.pop(before)
                self._free_starts.pop(i - 1)
                i -= 1
        if i < len(self._free_starts) and self._free_starts[i] == end:  # and with the one just above
            num_tokens += self._free_sizes.pop(end)
            self._free_starts.pop(i)
        self._free_starts.insert(i, start)
        self._free_sizes[start] = num_tokens
        self.used_tokens -= freed
