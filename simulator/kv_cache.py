"""The paged KV cache every policy shares: fixed-size blocks, allocation, freeing, capacity sizing.

Only block counts matter for timing, so the cache keeps how many blocks each request holds and how many
are free; it never hands out more blocks than it has. Policies ask it for room and preempt (by recompute)
when it says no; that decision stays in the policy. This cache shares nothing between requests; the
prefix caches (simulator/prefix_cache.py, simulator/radix_cache.py) keep its interface and add sharing.
"""
from __future__ import annotations

import numpy as np

from simulator.config import ClusterConfig, ConfigError, HardwareConfig, ModelConfig
from simulator.request import int_list

GIB = 1024**3


def kv_cache_blocks_per_gpu(model: ModelConfig, hardware: HardwareConfig, cluster: ClusterConfig) -> int:
    """Blocks of `cluster.block_size` tokens that fit on each GPU of one tp x pp replica.

    Memory left for KV = gpu_memory_utilization x GPU memory - weights of the GPU's shard
    - activation reserve. Every GPU of a replica holds the same token positions (its own heads/layers),
    so this is also the replica's capacity. Raises ConfigError when the model does not fit.
    """
    tp, pp = cluster.tp, cluster.pp
    budget_bytes = cluster.gpu_memory_utilization * hardware.memory_gib * GIB
    weight_bytes = model.weight_bytes_per_gpu(tp, pp)
    reserve_bytes = cluster.activation_reserve_gib * GIB
    kv_bytes = budget_bytes - weight_bytes - reserve_bytes
    block_bytes = cluster.block_size * model.kv_bytes_per_token(tp, pp)
    if kv_bytes < block_bytes:
        raise ConfigError(
            f"model {model.name} does not fit on {hardware.name} with cluster.tp={tp}, cluster.pp={pp}: "
            f"{cluster.gpu_memory_utilization} x {hardware.memory_gib} GiB = {budget_bytes / GIB:.1f} GiB "
            f"usable, weights take {weight_bytes / GIB:.1f} GiB and the activation reserve "
            f"{cluster.activation_reserve_gib} GiB, leaving no room for one KV block; "
            f"raise cluster.tp or cluster.pp"
        )
    return int(kv_bytes // block_bytes)


class KVCache:
    """Block accounting for one scheduler (a replica, or one of its pipeline virtual engines).

    `blocks_held` is indexed by request id and may be shared by several caches: a request lives in one.
    A request needing capacity for n tokens holds ceil(n / block_size) blocks.
    """

    # What a prefix cache reports (simulator/prefix_cache.py); this cache keeps nothing once freed.
    cached_free_blocks = 0  # blocks no request holds that still keep reusable KV
    evictions = 0  # cached blocks given to other KV
    lookup_blocks = 0  # full blocks of the requests looked up when first admitted
    hit_blocks = 0  # of those, blocks found cached

    def __init__(self, num_blocks: int, block_size: int, blocks_held: np.ndarray, watermark_blocks: int = 0):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks_held = blocks_held
        # The same memory for one-element reads and writes: Python ints, about twice as fast as numpy's
        # (see simulator.request.IntViews). blocks_held is only ever written in place.
        self._held = memoryview(blocks_held)
        self.watermark_blocks = watermark_blocks
        self.free_blocks = num_blocks

    def __getstate__(self) -> dict:  # memoryviews do not pickle or deep-copy: rebuilt from the array
        return {k: v for k, v in self.__dict__.items() if k != "_held"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._held = memoryview(self.blocks_held)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    def blocks_for(self, num_tokens):
        """Blocks needed to hold `num_tokens` tokens (int or array)."""
        return -(-num_tokens // self.block_size)

    def can_ever_hold(self, num_tokens: np.ndarray) -> np.ndarray:
        """True where a request of `num_tokens` tokens could be admitted into an empty cache."""
        return self.blocks_for(num_tokens) <= self.num_blocks - self.watermark_blocks

    def prefix_hit_blocks(self, request_id: int) -> int:
        """How many of the request's leading full prompt blocks this cache holds now: none here."""
        return 0

    def prefix_hit_tokens(self, request_id: int) -> int:
        """Tokens a request holding no blocks would find cached when admitted (they skip prefill): none here."""
        return 0

    def could_hold(self, request_id: int, num_tokens: int) -> bool:
        """Whether `allocate(request_id, num_tokens)` would succeed now (nothing changes): vLLM V1 admits a
        request only if its whole sequence fits, though it allocates only the first chunk's blocks."""
        return -(-num_tokens // self.block_size) - self._held[request_id] <= self.free_blocks

    def allocate(self, request_id: int, num_tokens: int, admission: bool = False) -> bool:
        """Grow the request's blocks to hold `num_tokens` tokens; False (and no change) if they don't fit.

        An admission (a request entering the running set) must also leave the watermark free, as in vLLM,
        so that running requests have room to grow.
        """
        needed = -(-num_tokens // self.block_size) - self._held[request_id]
        if needed <= 0:
            return True
        if self.free_blocks - needed < (self.watermark_blocks if admission else 0):
            return False
        self._held[request_id] += needed
        self.free_blocks -= needed
        return True

    def allocate_all(self, request_ids, num_tokens) -> bool:
        """Grow every request to hold its `num_tokens`, all or none; False (no change) if they don't fit.

        Lists or int arrays of equal length. A plain Python loop: batches are small, and most requests
        already hold the room (a decode crosses into a new block once every block_size tokens).
        """
        held, block_size = self._held, self.block_size
        growing, total = [], 0  # (request, blocks it will hold) of the requests that need more
        for r, n in zip(int_list(request_ids), int_list(num_tokens)):
            blocks = -(-n // block_size)
            if blocks > held[r]:
                growing.append((r, blocks))
                total += blocks - held[r]
        if total > self.free_blocks:
            return False
        for r, blocks in growing:
            held[r] = blocks
        self.free_blocks -= total
        return True

    def free(self, request_ids) -> None:
        """Return all blocks of these requests (finished or preempted); a list or an int array."""
        held = self._held
        for r in int_list(request_ids):
            self.free_blocks += held[r]
            held[r] = 0

    # --- runs of decodes (simulator/replica.py advances them in one step) ---------------------------

    def capacity_tokens(self, request_ids: list[int]) -> list[int]:
        """How many tokens the blocks of each request can hold."""
        held, block_size = self._held, self.block_size
        return [held[r] * block_size for r in request_ids]

    def decode_run_steps(self, request_ids: list[int], kv_tokens: list[int],
                         max_steps: int) -> tuple[int, list[int]]:
        """How many decode iterations of these requests fit in the free blocks (at most max_steps), and each
        request's spare slots (held capacity - kv_tokens) at the start.

        Step k (1-based) computes token kv_tokens + k - 1 and needs room for kv_tokens + k tokens; step 1
        is already allocated by the policy. Nothing is allocated here: `take_decode_run_blocks` takes the
        steps run, and `decode_run_blocks_used` gives the used-block count of each step.
        """
        block_size = self.block_size
        spare = [capacity - k for capacity, k in zip(self.capacity_tokens(request_ids), kv_tokens)]
        # A request with a free slot needs at most ceil(max_steps / block_size) more blocks: when that fits
        # for all of them, skip the per-request count (the usual case while the cache has room).
        if len(spare) * -(-max_steps // block_size) <= self.free_blocks and min(spare) >= 1:
            return max_steps, spare
        if self.decode_run_blocks(spare, max_steps) <= self.free_blocks:
            return max_steps, spare
        added = decode_run_blocks_used(np.zeros(1, np.int64), np.array(spare, np.int64),
                                       np.array([len(spare)]), np.array([max_steps]), block_size)
        return int(np.searchsorted(added, self.free_blocks, side="right")), spare

    def decode_run_blocks(self, spare_slots: list[int], num_steps: int) -> int:
        """New blocks a run of `num_steps` decodes takes: a request with s spare slots needs room for
        num_steps - s more tokens."""
        block_size = self.block_size
        return sum(-(-(num_steps - s) // block_size) for s in spare_slots if s < num_steps)

    def take_decode_run_blocks(self, request_ids: list[int], spare_slots: list[int], num_steps: int,
                               steps_taken: int = 0) -> None:
        """Give each request the blocks its decodes `steps_taken` + 1 .. `num_steps` of a run took, as
        planned by `decode_run_steps` (they fit). A request with s spare slots at the run's start takes a
        new block at steps s + 1, s + 1 + block_size, ..."""
        held = self._held
        for r, blocks in self._decode_run_growth(request_ids, spare_slots, num_steps, steps_taken):
            held[r] += blocks
            self.free_blocks -= blocks
        if self.free_blocks < 0:
            raise AssertionError("KV blocks of a planned decode run did not fit")  # decode_run_steps is wrong

    def _decode_run_growth(self, request_ids: list[int], spare_slots: list[int], num_steps: int,
                           steps_taken: int) -> list[tuple[int, int]]:
        """(request, new blocks) of each request that takes blocks in steps steps_taken + 1 .. num_steps."""
        block_size = self.block_size
        growth = []
        for r, s in zip(request_ids, spare_slots):
            if s < num_steps:
                blocks = -(-(num_steps - s) // block_size)
                if s < steps_taken:
                    blocks -= -(-(steps_taken - s) // block_size)
                if blocks:
                    growth.append((r, blocks))
        return growth


def decode_run_blocks_used(used_at_start: np.ndarray, spare_slots: np.ndarray, requests_per_run: np.ndarray,
                           steps: np.ndarray, block_size: int) -> np.ndarray:
    """Blocks in use during every step of many decode runs, concatenated run after run.

    Run r starts with used_at_start[r] blocks in use and lasts steps[r] iterations; its requests_per_run[r]
    requests have the next requests_per_run[r] entries of spare_slots free token slots in their blocks. A
    request with `spare` free slots takes a new block at steps spare + 1, spare + 1 + block_size, ...
    Vectorised over all runs at once (the recorder calls it when the simulation is over).
    """
    # Tens of millions of steps for a million requests: step-sized arrays are built once and updated in
    # place (two at a time at most).
    steps = np.asarray(steps, np.int64)
    spare = np.asarray(spare_slots, np.int64)
    run_of_request = np.repeat(np.arange(len(steps)), requests_per_run)
    # Each request's new blocks within its run: steps spare+1, spare+1+bs, ... up to the run's length.
    counts = np.maximum((steps[run_of_request] - spare + (block_size - 1)) // block_size, 0)
    owner = np.repeat(np.arange(len(spare)), counts)
    run_start = np.cumsum(steps) - steps  # index of each run's first step in the output
    # Output index of each new block's step (step spare + 1 + nth * block_size of its run, counting from 1):
    # the run's first index + spare + nth * block_size.
    block_step = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    block_step *= block_size
    block_step += spare[owner] + run_start[run_of_request[owner]]
    del owner, counts, run_of_request
    used = np.bincount(block_step, minlength=int(steps.sum()))
    del block_step
    first_new = used[run_start]
    np.cumsum(used, out=used)
    # Restart the running total at each run (subtract what earlier runs added) from its used_at_start.
    used += np.repeat(np.asarray(used_at_start, np.int64) - (used[run_start] - first_new), steps)
    return used
