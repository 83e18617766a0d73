"""Automatic prefix caching as vLLM V1 does it (vllm/v1/core: kv_cache_manager.py, block_pool.py).

A full KV block is identified by the chain hash of its tokens and of every token before it
(simulator/content.py), so a block can serve any request whose sequence starts the same way. Blocks have
reference counts: the requests holding them. A block nobody holds goes to the free queue but keeps its
KV and its hash; a new request takes the longest run of cached blocks from its own start (never its
whole sequence: at least its last token is computed, so that it has logits to sample from), and those
tokens skip prefill. New blocks come from the head of the free queue, evicting the cached KV they held,
so the least recently freed blocks go first; a finished or preempted request's blocks join the tail
last block first, so that its ends are evicted before the prefixes other requests may share.

A prompt block is cached once full, at the allocation that makes room for its last token (vLLM caches
the blocks a step will fill when it schedules the step). Blocks filled by decoding are cached when the
request leaves (finishes or is preempted); vLLM caches them as they fill, which only differs for a
request sharing text another is still generating, and keeps a run of decodes free of cache changes, so
that the replica may advance it in one step. Content keys may cover output tokens, which a multi-turn
session's next turn sends back. Two requests computing the same block at the same time keep two copies;
only the first is cached (vLLM keeps both findable).

Everything else is KVCache's: `free_blocks` counts every block nobody holds (cached or not, all can be
handed out), so the policies' admission checks and the replica's runs of decodes work unchanged.
"""
from __future__ import annotations

from collections import deque
from itertools import repeat
from operator import add, sub

import numpy as np

from simulator.kv_cache import KVCache
from simulator.request import RequestState, int_list


def _run_in_c(calls) -> None:
    """Exhaust an iterator of calls (map(list.__setitem__, ...), map(dict.__delitem__, ...)) without a
    Python-level loop: a zero-length deque consumes it in C, several times faster per element."""
    deque(calls, maxlen=0)


class PrefixCachingKV(KVCache):
    """A KVCache whose full blocks outlive their requests and are reused by requests sharing a prefix.

    Needs the requests' content (requests.content, not None). Blocks are numbered 0..num_blocks-1;
    `blocks_of[r]` lists request r's blocks in token order, `ref_count[b]` how many requests hold b.
    """

    def __init__(self, num_blocks: int, block_size: int, blocks_held: np.ndarray, watermark_blocks: int,
                 requests: RequestState):
        super().__init__(num_blocks, block_size, blocks_held, watermark_blocks)
        if requests.content is None:
            raise ValueError("a prefix cache needs the requests' content (requests.content is None)")
        requests.content.check_block_size(block_size)
        self.requests = requests
        self.ref_count = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks  # None: not cached
        self.cached: dict[int, int] = {}  # chain hash -> the block caching it
        self.blocks_of: dict[int, list[int]] = {}
        self._checked_blocks: dict[int, int] = {}  # request -> leading blocks already offered to the cache
        self._hashes: dict[int, list[int]] = {}  # request -> chain hashes of its blocks, while it holds any
        self.cached_free_blocks = 0
        self.evictions = self.lookup_blocks = self.hit_blocks = 0
        # A policy asks for a request's hit, then admits it: the lookup is kept until the cache changes.
        self._version = 0  # moves whenever a block is cached or evicted
        self._last_lookup: tuple = (-1, -1, -1, [])  # (request, its hit limit, version, cached blocks)
        self._start_free_list(num_blocks)

    @classmethod
    def replacing(cls, kv: KVCache, requests: RequestState) -> PrefixCachingKV:
        """A cache of this kind with `kv`'s size, watermark and shared `blocks_held` (kv holds nothing yet)."""
        return cls(kv.num_blocks, kv.block_size, kv.blocks_held, kv.watermark_blocks, requests)

    # --- the free list: vLLM's free queue (a subclass may order it otherwise) ------------------------

    def _start_free_list(self, num_blocks: int) -> None:
        # A FIFO from which a hit may take a block out of the middle. Kept as two lists from a head index,
        # the queued blocks and the stamp each was queued with, and each block's live stamp: taking a block
        # out only forgets its stamp, and its entry is skipped when it reaches the head. A block freed
        # again gets a new stamp, so an old entry of it is never mistaken for the new one.
        # A long-prompt trace moves millions of blocks through here, so the per-block work runs in C
        # (slices, map, list comparison) rather than in Python loops: see _run_in_c.
        self._queue_blocks: list[int] = list(range(num_blocks))
        self._queue_stamps: list[int] = [0] * num_blocks
        self._queue_head = 0
        self._queued = [0] * num_blocks  # block -> stamp of its live entry (-1, or a used-up one: none)
        self._stamp = 1

    def _pop_free(self) -> int:
        """The free block to hand out next (the least recently freed)."""
        return self._take_from_queue(1)[0]

    def _push_free(self, block: int) -> None:
        self._push_free_all([block])

    def _push_free_all(self, blocks: list[int]) -> None:
        """_push_free of each block, in order (each block once)."""
        stamp = self._stamp
        self._stamp += 1
        self._queue_blocks += blocks
        self._queue_stamps += repeat(stamp, len(blocks))
        _run_in_c(map(self._queued.__setitem__, blocks, repeat(stamp)))

    def _unfree_all(self, blocks: list[int]) -> None:
        """These free cached blocks are taken by a request hitting them."""
        _run_in_c(map(self._queued.__setitem__, blocks, repeat(-1)))

    def _touch(self, blocks: list[int]) -> None:
        """These blocks were used now (vLLM's order is the free queue's alone)."""

    def free_queue_order(self) -> list[int]:
        """The free blocks in the order they would be handed out."""
        head, queued = self._queue_head, self._queued
        return [b for b, s in zip(self._queue_blocks[head:], self._queue_stamps[head:]) if queued[b] == s]

    def _free_set(self) -> set[int]:
        return set(self.free_queue_order())

    def _take_from_queue(self, count: int) -> list[int]:
        """The first `count` live blocks of the free queue, taken out of it."""
        blocks, stamps, queued = self._queue_blocks, self._queue_stamps, self._queued
        taken: list[int] = []
        while count:
            head = self._queue_head
            window = blocks[head:head + count]
            if not window:
                raise AssertionError("the free queue ran dry")  # free_blocks and the queue disagree
            self._queue_head = head + len(window)
            if list(map(queued.__getitem__, window)) == stamps[head:head + len(window)]:
                live = window  # the usual case: no hit took any of them out since they were queued
            else:
                live = [b for b, s in zip(window, stamps[head:head + len(window)]) if queued[b] == s]
            taken += live
            count -= len(live)
        # A taken block's entry is used up, and it is queued again only with a new stamp: its old stamp can
        # stay in _queued (no entry still in the queue carries it).
        if self._queue_head > 65_536 and 2 * self._queue_head > len(blocks):  # drop the used-up front
            del blocks[:self._queue_head], stamps[:self._queue_head]
            self._queue_head = 0
        return taken

    def _take_free_blocks(self, count: int) -> list[int]:
        """`count` blocks from the head of the free list, their cached KV evicted (the caller checked
        there are enough)."""
        taken = self._take_from_queue(count)
        block_hash = self.block_hash
        evicted = list(map(block_hash.__getitem__, taken))
        if None in evicted:  # some held no cached KV
            evicted = [h for h in evicted if h is not None]
        if evicted:
            _run_in_c(map(self.cached.__delitem__, evicted))
            _run_in_c(map(block_hash.__setitem__, taken, repeat(None)))
            self._version += 1
            self.cached_free_blocks -= len(evicted)
            self.evictions += len(evicted)
        return taken

    def _cache_blocks(self, owned: list[int], start: int, stop: int, hashes: list[int]) -> int:
        """Make owned[j] findable under hashes[j] for j in [start, stop), unless another block already
        caches that hash (the first copy stays findable); return where caching stopped (stop: everywhere).

        owned[start:stop] cache nothing yet: they were taken from the free list (evicted) after the
        request's hits, and each of a request's blocks is offered once."""
        blocks = owned[start:stop]
        kept = list(map(self.cached.setdefault, hashes[start:stop], blocks))  # a hash cached already keeps its block
        if kept == blocks:  # the usual case: all of them are new to the cache
            _run_in_c(map(self.block_hash.__setitem__, blocks, hashes[start:stop]))
        else:
            block_hash = self.block_hash
            for block, hash_, now in zip(blocks, hashes[start:stop], kept):
                if now == block:
                    block_hash[block] = hash_
        return stop

    def _evict(self, block: int) -> None:
        self._version += 1
        del self.cached[self.block_hash[block]]
        self.block_hash[block] = None
        self.cached_free_blocks -= 1
        self.evictions += 1

    # --- lookups -----------------------------------------------------------------------------------

    def _hashes_of(self, request_id: int) -> list[int]:
        hashes = self._hashes.get(request_id)
        if hashes is None:
            ints = self.requests.ints
            length = ints.prompt_tokens[request_id] + ints.output_tokens[request_id]
            hashes = self.requests.content.hash_list(request_id, self.block_size)[: length // self.block_size]
            self._hashes[request_id] = hashes
        return hashes

    def _cached_run(self, hashes: list[int], max_blocks: int) -> list[int]:
        """The cached blocks matching hashes[0], hashes[1], ... up to the first miss (at most max_blocks)."""
        # Looked up in chunks that double in size (in C), so a short run costs little and a long one
        # takes few steps.
        get, limit = self.cached.get, min(max_blocks, len(hashes))
        blocks: list[int] = []
        start, size = 0, 4
        while start < limit:
            found = list(map(get, hashes[start:min(start + size, limit)]))
            if None in found:
                return blocks + found[:found.index(None)]
            blocks += found
            start += size
            size *= 2
        return blocks

    def _max_hit_blocks(self, request_id: int) -> int:
        # vLLM never hits a request's whole known sequence: its last token is computed again.
        ints = self.requests.ints
        return (ints.prompt_tokens[request_id] + ints.generated_tokens[request_id] - 1) // self.block_size

    def prefix_hit_blocks(self, request_id: int) -> int:
        """How many of the request's leading full prompt blocks this cache holds now (no LRU change)."""
        num_tokens = self.requests.ints.prompt_tokens[request_id]
        hashes = self.requests.content.hash_list(request_id, self.block_size)
        return len(self._cached_run(hashes, num_tokens // self.block_size))

    def prefix_hit_tokens(self, request_id: int) -> int:
        """Tokens a request holding no blocks and no computed tokens finds cached now (whole blocks)."""
        if self._held[request_id] or self.requests.ints.computed_tokens[request_id]:
            return 0
        return len(self._prefix_blocks(request_id)) * self.block_size

    def _prefix_blocks(self, request_id: int) -> list[int]:
        """The cached blocks a request holding none would take now (callers slice the list, never change it)."""
        limit = self._max_hit_blocks(request_id)
        last_request, last_limit, version, blocks = self._last_lookup
        if last_request != request_id or last_limit != limit or version != self._version:
            blocks = self._cached_run(self._hashes_of(request_id), limit)
            self._last_lookup = (request_id, limit, self._version, blocks)
        return blocks

    # --- allocation --------------------------------------------------------------------------------

    def allocate(self, request_id: int, num_tokens: int, admission: bool = False) -> bool:
        """Grow the request's blocks to hold `num_tokens` tokens, all or nothing (KVCache.allocate).

        A request holding no blocks first takes its cached prefix (within num_tokens, as
        `prefix_hit_tokens` reports it); then new blocks come from the free queue.
        """
        held = self._held[request_id]
        hits: list[int] = []
        if held == 0 and not self.requests.ints.computed_tokens[request_id]:
            hits = self._prefix_blocks(request_id)[: num_tokens // self.block_size]
        needed = -(-num_tokens // self.block_size) - held - len(hits)
        if needed <= 0 and not hits:
            self._cache_prompt_blocks(request_id, num_tokens)
            return True
        ref_count = self.ref_count
        hit_counts = list(map(ref_count.__getitem__, hits))
        free_hits = hit_counts.count(0)  # cached blocks nobody holds: back in use, no longer free
        if self.free_blocks - free_hits - max(needed, 0) < (self.watermark_blocks if admission else 0):
            return False
        if held == 0 and self.requests.ints.preemptions[request_id] == 0:
            prompt_blocks = self.requests.ints.prompt_tokens[request_id] // self.block_size
            self.lookup_blocks += min(prompt_blocks, len(self._hashes_of(request_id)))
            self.hit_blocks += len(hits)
        owned = self.blocks_of.setdefault(request_id, [])
        if free_hits:
            self._unfree_all([b for b, c in zip(hits, hit_counts) if c == 0])
            self.free_blocks -= free_hits
            self.cached_free_blocks -= free_hits  # hits are cached blocks
        _run_in_c(map(ref_count.__setitem__, hits, map(add, hit_counts, repeat(1))))
        owned += hits
        self._touch(hits)
        self._held[request_id] = len(owned)
        if needed > 0:
            self._grow(request_id, needed)
        if hits:
            self._checked_blocks[request_id] = len(hits)
        self._cache_prompt_blocks(request_id, num_tokens)
        return True

    def allocate_all(self, request_ids, num_tokens) -> bool:
        """Grow every request to hold its `num_tokens`, all or none (KVCache.allocate_all); no prefix hits
        (these are running requests)."""
        held, block_size = self._held, self.block_size
        request_ids, num_tokens = int_list(request_ids), int_list(num_tokens)
        growing, total = [], 0
        for r, n in zip(request_ids, num_tokens):
            blocks = -(-n // block_size)
            if blocks > held[r]:
                growing.append((r, blocks - held[r]))
                total += blocks - held[r]
        if total > self.free_blocks:
            return False
        for r, new in growing:
            self._grow(r, new)
        for r, n in zip(request_ids, num_tokens):
            self._cache_prompt_blocks(r, n)
        return True

    def free(self, request_ids) -> None:
        """Release the blocks of these requests (finished or preempted): they stay cached, and join the
        free queue's tail last block first."""
        computed = self.requests.ints.computed_tokens
        ref_count, block_hash = self.ref_count, self.block_hash
        for r in int_list(request_ids):
            if self._held[r]:
                self._cache_full_blocks(r, computed[r])  # what its decodes filled
            owned = self.blocks_of.pop(r, None)
            self._checked_blocks.pop(r, None)
            self._hashes.pop(r, None)
            self._held[r] = 0
            if not owned:
                continue
            self._touch(owned)
            owned.reverse()  # the last block goes first
            counts = list(map(ref_count.__getitem__, owned))
            _run_in_c(map(ref_count.__setitem__, owned, map(sub, counts, repeat(1))))
            # Released: the blocks nobody else holds (a shared system prompt's are often held by others).
            released = owned if counts.count(1) == len(counts) else [b for b, c in zip(owned, counts) if c == 1]
            self.free_blocks += len(released)
            self.cached_free_blocks += len(released) - list(map(block_hash.__getitem__, released)).count(None)
            self._push_free_all(released)

    def take_decode_run_blocks(self, request_ids: list[int], spare_slots: list[int], num_steps: int) -> None:
        """KVCache.take_decode_run_blocks, with real blocks (the blocks decodes fill are cached when the
        request leaves)."""
        block_size = self.block_size
        for r, s in zip(request_ids, spare_slots):
            if s < num_steps:
                self._grow(r, -(-(num_steps - s) // block_size))

    # --- blocks ------------------------------------------------------------------------------------

    def _grow(self, request_id: int, new_blocks: int) -> None:
        """Give the request `new_blocks` blocks from the free list (the caller checked they are free)."""
        if new_blocks > self.free_blocks:
            raise AssertionError("KV blocks handed out beyond capacity")  # a caller skipped the free check
        owned = self.blocks_of.setdefault(request_id, [])
        taken = self._take_free_blocks(new_blocks)
        _run_in_c(map(self.ref_count.__setitem__, taken, repeat(1)))
        owned += taken
        self.free_blocks -= new_blocks
        self._held[request_id] = len(owned)

    def _cache_prompt_blocks(self, request_id: int, num_tokens: int) -> None:
        """Cache the blocks an allocation for `num_tokens` tokens fills when it is for prefill (a prompt, or
        what a preempted request recomputes); a decode's blocks wait until the request leaves."""
        ints = self.requests.ints
        generated = ints.generated_tokens[request_id]
        if generated and ints.computed_tokens[request_id] + 1 == ints.prompt_tokens[request_id] + generated:
            return
        self._cache_full_blocks(request_id, num_tokens)

    def _cache_full_blocks(self, request_id: int, num_tokens: int) -> None:
        """Offer the request's blocks full within its first `num_tokens` tokens to the cache, once each."""
        start = self._checked_blocks.get(request_id, 0)
        full = min(num_tokens // self.block_size, self._held[request_id])
        if full <= start:
            return
        self._version += 1
        hashes = self._hashes_of(request_id)
        owned = self.blocks_of[request_id]
        stop = min(full, len(hashes))
        if self._cache_blocks(owned, start, stop, hashes) < stop:
            full = len(owned)  # never offer this request's later blocks
        self._checked_blocks[request_id] = full

    # --- checks ------------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError unless the bookkeeping is consistent: reference counts match the requests'
        block lists and are never negative, a block is free exactly when nobody holds it, the cache index
        matches the blocks' hashes, and cached-unreferenced + in use + free-uncached = capacity."""
        counts = [0] * self.num_blocks
        for r, owned in self.blocks_of.items():
            assert self._held[r] == len(owned), f"request {r}: blocks_held {self._held[r]} != {len(owned)}"
            for block in owned:
                counts[block] += 1
        assert counts == self.ref_count, "reference counts differ from the requests' block lists"
        assert min(self.ref_count, default=0) >= 0, "a negative reference count"
        free = self._free_set()
        assert len(free) == self.free_blocks, f"{len(free)} blocks in the free list, free_blocks={self.free_blocks}"
        assert all((b in free) == (self.ref_count[b] == 0) for b in range(self.num_blocks)), \
            "a block both free and referenced, or neither"
        assert all(self.block_hash[b] == h for h, b in self.cached.items()), "cache index and block hashes differ"
        assert sum(h is not None for h in self.block_hash) == len(self.cached), "a hashed block not in the index"
        cached_free = sum(1 for b in free if self.block_hash[b] is not None)
        assert cached_free == self.cached_free_blocks, f"cached free {cached_free} != {self.cached_free_blocks}"
        in_use = sum(1 for c in counts if c > 0)
        free_uncached = sum(1 for b in free if self.block_hash[b] is None)
        assert cached_free + in_use + free_uncached == self.num_blocks, "blocks lost or counted twice"
