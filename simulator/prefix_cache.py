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

Representation. A long-prompt trace moves millions of blocks through here (the Mooncake conversation
trace: about 8 million taken, cached, evicted and freed), so the per-block state lives in numpy arrays and
a request's blocks stay an int array from the free queue to the free queue: each step is a fancy-indexing
pass (a few ns per block) instead of a Python loop or a map over lists (30-60 ns). Only the hash index
`cached` (chain hash -> block) is a dict, as Python ints; blocks go to and from it with tolist/np.array.

  ref_count[b]     int64, the requests holding block b
  block_hash[b]    uint64, the chain hash block b caches, NO_HASH (0) when it caches nothing; a chain
                   hash of 0 (odds 2^-64 per block) is refused with an error rather than mistaken for none
  blocks_of[r]     int64 array, request r's blocks in token order (a view of a buffer that grows by
                   doubling; a view handed out earlier keeps the blocks it showed)
  the free queue   a ring of (block, stamp) entries in two int64 arrays; see _start_free_list
"""
from __future__ import annotations

from collections import deque

import numpy as np

from simulator.kv_cache import KVCache
from simulator.request import RequestState, int_list

NO_HASH = 0  # block_hash of a block that caches nothing
NO_BLOCKS = np.zeros(0, dtype=np.int64)


def _run_in_c(calls) -> None:
    """Exhaust an iterator of calls (map(dict.__delitem__, ...)) without a Python-level loop: a
    zero-length deque consumes it in C, several times faster per element."""
    deque(calls, maxlen=0)


def _probable_end(get, hashes: list[int], limit: int) -> int:
    """The index of the first of hashes[:limit] that `get` misses (limit if none), found with a few single
    lookups as if the cached hashes were always a prefix: at doubling indices, then halving the gap.
    If they are not, the index returned still misses, but an earlier one may too.

    The router asks every replica about every request, and most runs end long before the request's end:
    looking up every hash, or doubling chunks of them, would look up many past the run's end."""
    hit, miss = -1, 0  # an index found cached (-1: none yet), the next one to probe
    while miss < limit and get(hashes[miss]) is not None:
        hit, miss = miss, 2 * miss + 1
    miss = min(miss, limit)  # from here: `miss` misses, or is the limit
    while miss - hit > 1:
        middle = (hit + miss) // 2
        if get(hashes[middle]) is None:
            miss = middle
        else:
            hit = middle
    return miss


class PrefixCachingKV(KVCache):
    """A KVCache whose full blocks outlive their requests and are reused by requests sharing a prefix.

    Needs the requests' content (requests.content, not None). Blocks are numbered 0..num_blocks-1;
    `blocks_of[r]` holds request r's blocks in token order, `ref_count[b]` how many requests hold b and
    `block_hash[b]` the chain hash b caches (NO_HASH: none); see the module docstring.
    """

    def __init__(self, num_blocks: int, block_size: int, blocks_held: np.ndarray, watermark_blocks: int,
                 requests: RequestState):
        super().__init__(num_blocks, block_size, blocks_held, watermark_blocks)
        if requests.content is None:
            raise ValueError("a prefix cache needs the requests' content (requests.content is None)")
        requests.content.check_block_size(block_size)
        self.requests = requests
        self.ref_count = np.zeros(num_blocks, dtype=np.int64)
        self.block_hash = np.zeros(num_blocks, dtype=np.uint64)
        self._make_item_views()
        self.cached: dict[int, int] = {}  # chain hash -> the block caching it
        self.blocks_of: dict[int, np.ndarray] = {}  # request -> its blocks: a view of _block_buffers[r]
        self._block_buffers: dict[int, np.ndarray] = {}
        self._checked_blocks: dict[int, int] = {}  # request -> leading blocks already offered to the cache
        # request -> chain hashes of its blocks (list, array), while it holds any
        self._hashes: dict[int, tuple[list[int], np.ndarray]] = {}
        self.cached_free_blocks = 0
        self.evictions = self.lookup_blocks = self.hit_blocks = 0
        # A policy asks for a request's hit, then admits it: the lookup is kept until the cache changes.
        self._version = 0  # moves whenever a block is cached or evicted
        self._last_lookup: tuple = (-1, -1, -1, [])  # (request, its hit limit, version, cached blocks)
        self._start_free_list(num_blocks)

    def _make_item_views(self) -> None:
        # One-element reads and writes (RadixCache's per-block code) through memoryviews give Python ints
        # and are several times faster than numpy's scalar indexing.
        self._ref_items = memoryview(self.ref_count)
        self._hash_items = memoryview(self.block_hash)

    def __getstate__(self) -> dict:  # memoryviews do not pickle or deep-copy: rebuilt from the arrays
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in ("_ref_items", "_hash_items")}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._make_item_views()

    @classmethod
    def replacing(cls, kv: KVCache, requests: RequestState) -> PrefixCachingKV:
        """A cache of this kind with `kv`'s size, watermark and shared `blocks_held` (kv holds nothing yet)."""
        return cls(kv.num_blocks, kv.block_size, kv.blocks_held, kv.watermark_blocks, requests)

    # --- the free list: vLLM's free queue (a subclass may order it otherwise) ------------------------

    def _start_free_list(self, num_blocks: int) -> None:
        # A FIFO from which a hit may take a block out of the middle. Entries (block, stamp) sit in two
        # arrays between a head and a tail index; `_queued[b]` is the stamp of block b's live entry.
        # Taking a block out only forgets its stamp (-1), and its entry is skipped when it reaches the
        # head. A block freed again gets a new stamp, so an old entry of it is never mistaken for the new
        # one. At most num_blocks entries are live, so with room for twice that, dropping the dead ones
        # when the tail reaches the end (_compact_queue) always leaves room for a whole free.
        capacity = 2 * max(num_blocks, 1)
        self._queue_blocks = np.zeros(capacity, dtype=np.int64)
        self._queue_blocks[:num_blocks] = np.arange(num_blocks)
        self._queue_stamps = np.zeros(capacity, dtype=np.int64)
        self._queue_head, self._queue_tail = 0, num_blocks
        self._queued = np.zeros(num_blocks, dtype=np.int64)  # block -> stamp of its live entry
        self._stamp = 1

    def _push_free_all(self, blocks: np.ndarray) -> None:
        """Queue these freed blocks at the tail, in order (each block once)."""
        count = len(blocks)
        if self._queue_tail + count > len(self._queue_blocks):
            self._compact_queue()
        tail, stamp = self._queue_tail, self._stamp
        self._queue_blocks[tail:tail + count] = blocks
        self._queue_stamps[tail:tail + count] = stamp
        self._queued[blocks] = stamp
        self._queue_tail = tail + count
        self._stamp += 1

    def _live_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(blocks, stamps) of the free queue's live entries, head first."""
        head, tail = self._queue_head, self._queue_tail
        blocks, stamps = self._queue_blocks[head:tail], self._queue_stamps[head:tail]
        live = self._queued[blocks] == stamps
        return blocks[live], stamps[live]

    def _compact_queue(self) -> None:
        """Move the live entries to the front of the arrays, in order, dropping the rest."""
        blocks, stamps = self._live_entries()  # copies: safe to write over
        self._queue_blocks[:len(blocks)] = blocks
        self._queue_stamps[:len(blocks)] = stamps
        self._queue_head, self._queue_tail = 0, len(blocks)

    def _unfree_all(self, blocks: np.ndarray) -> None:
        """These free cached blocks are taken by a request hitting them."""
        self._queued[blocks] = -1

    def _matched(self, block: int) -> None:
        """A request's cached prefix ended at `block` (SGLang's radix tree splits its node there)."""

    def _touch(self, blocks: np.ndarray) -> None:
        """These blocks were used now (vLLM's order is the free queue's alone)."""

    def free_queue_order(self) -> list[int]:
        """The free blocks in the order they would be handed out."""
        return self._live_entries()[0].tolist()

    def _free_set(self) -> set[int]:
        return set(self.free_queue_order())

    def _take_from_queue(self, count: int) -> np.ndarray:
        """The first `count` live blocks of the free queue, taken out of it (a new array)."""
        blocks, stamps, queued = self._queue_blocks, self._queue_stamps, self._queued
        head, tail = self._queue_head, self._queue_tail
        parts = []
        while count:
            stop = min(head + count, tail)
            if stop == head:
                raise AssertionError("the free queue ran dry")  # free_blocks and the queue disagree
            window = blocks[head:stop]
            live = queued[window] == stamps[head:stop]
            head = stop
            if not live.all():  # a hit took some of them out since they were queued
                window = window[live]
            parts.append(window)
            count -= len(window)
        # A taken block's entry is used up, and it is queued again only with a new stamp: its old stamp
        # can stay in _queued (no entry still in the queue carries it).
        self._queue_head = head
        # A copy: the queue's arrays are written over later.
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def _take_free_blocks(self, count: int) -> np.ndarray:
        """`count` blocks from the head of the free list, their cached KV evicted (the caller checked
        there are enough)."""
        taken = self._take_from_queue(count)
        hashes = self.block_hash[taken]
        evicted = np.count_nonzero(hashes)  # blocks caching something
        if evicted:
            gone = hashes if evicted == len(hashes) else hashes[hashes != NO_HASH]
            _run_in_c(map(self.cached.__delitem__, gone.tolist()))
            self.block_hash[taken] = NO_HASH
            self._version += 1
            self.cached_free_blocks -= evicted
            self.evictions += evicted
        return taken

    def _cache_blocks(self, owned: np.ndarray, start: int, stop: int, hashes: tuple[list[int], np.ndarray]) -> int:
        """Make owned[j] findable under hash j (of `hashes`, the request's (list, array)) for j in
        [start, stop), unless another block already caches that hash (the first copy stays findable);
        return where caching stopped (stop: everywhere).

        owned[start:stop] cache nothing yet: they were taken from the free list (evicted) after the
        request's hits, and each of a request's blocks is offered once."""
        hash_list, hash_array = hashes
        blocks = owned[start:stop]
        block_ids = blocks.tolist()
        kept = list(map(self.cached.setdefault, hash_list[start:stop], block_ids))  # a cached hash keeps its block
        if kept == block_ids:  # the usual case: all of them are new to the cache
            self.block_hash[blocks] = hash_array[start:stop]
        else:
            new = np.array(kept, dtype=np.int64) == blocks
            self.block_hash[blocks[new]] = hash_array[start:stop][new]
        return stop

    def _evict(self, block: int) -> None:
        self._version += 1
        del self.cached[self._hash_items[block]]
        self._hash_items[block] = NO_HASH
        self.cached_free_blocks -= 1
        self.evictions += 1

    # --- lookups -----------------------------------------------------------------------------------

    def _hashes_of(self, request_id: int) -> tuple[list[int], np.ndarray]:
        """The chain hashes of the request's full blocks (prompt and output), as a list and an array."""
        hashes = self._hashes.get(request_id)
        if hashes is None:
            ints, content = self.requests.ints, self.requests.content
            length = ints.prompt_tokens[request_id] + ints.output_tokens[request_id]
            hash_array = content.hashes(request_id, self.block_size, length)
            if not hash_array.all():
                raise ValueError(f"request {request_id}: a block's chain hash is {NO_HASH}, the value "
                                 f"block_hash keeps for blocks caching nothing")
            hashes = (content.hash_list(request_id, self.block_size)[: len(hash_array)], hash_array)
            self._hashes[request_id] = hashes
        return hashes

    def _cached_run(self, hashes: list[int], max_blocks: int) -> list[int]:
        """The cached blocks matching hashes[0], hashes[1], ... up to the first miss (at most max_blocks)."""
        get, limit = self.cached.get, min(max_blocks, len(hashes))
        end = _probable_end(get, hashes, limit)
        # Every hash before the probed end is looked up (in C): a run is cut at its first miss even where
        # blocks after it are still cached.
        found = list(map(get, hashes[:end]))
        return found[:found.index(None)] if None in found else found

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
            blocks = self._cached_run(self._hashes_of(request_id)[0], limit)
            self._last_lookup = (request_id, limit, self._version, blocks)
        return blocks

    # --- allocation --------------------------------------------------------------------------------

    def _hits_and_needed(self, request_id: int, num_tokens: int) -> tuple[np.ndarray, int]:
        """What holding `num_tokens` tokens takes: the cached prefix blocks a request holding none would
        take (within num_tokens, as `prefix_hit_tokens` reports it), and how many blocks must come from the
        free queue beyond those (<= 0: none)."""
        held = self._held[request_id]
        hits = NO_BLOCKS
        if held == 0 and not self.requests.ints.computed_tokens[request_id]:
            hit_list = self._prefix_blocks(request_id)[: num_tokens // self.block_size]
            if hit_list:
                hits = np.array(hit_list, dtype=np.int64)
        return hits, -(-num_tokens // self.block_size) - held - len(hits)

    def could_hold(self, request_id: int, num_tokens: int) -> bool:
        """Whether `allocate(request_id, num_tokens)` would succeed now (KVCache.could_hold), its cached
        prefix counted: hits nobody holds leave the free queue, the rest comes from it."""
        hits, needed = self._hits_and_needed(request_id, num_tokens)
        free_hits = int(np.count_nonzero(self.ref_count[hits] == 0))
        return self.free_blocks - free_hits - max(needed, 0) >= 0

    def allocate(self, request_id: int, num_tokens: int, admission: bool = False) -> bool:
        """Grow the request's blocks to hold `num_tokens` tokens, all or nothing (KVCache.allocate).

        A request holding no blocks first takes its cached prefix; then new blocks come from the free queue.
        """
        hits, needed = self._hits_and_needed(request_id, num_tokens)
        if needed <= 0 and not len(hits):
            self._cache_prompt_blocks(request_id, num_tokens)
            return True
        hit_counts = self.ref_count[hits]
        unheld = hit_counts == 0  # cached blocks nobody holds: back in use, no longer free
        free_hits = int(np.count_nonzero(unheld))
        if self.free_blocks - free_hits - max(needed, 0) < (self.watermark_blocks if admission else 0):
            return False
        if self._held[request_id] == 0 and self.requests.ints.preemptions[request_id] == 0:
            prompt_blocks = self.requests.ints.prompt_tokens[request_id] // self.block_size
            self.lookup_blocks += min(prompt_blocks, len(self._hashes_of(request_id)[0]))
            self.hit_blocks += len(hits)
        if free_hits:
            self._unfree_all(hits[unheld])
            self.free_blocks -= free_hits
            self.cached_free_blocks -= free_hits  # hits are cached blocks
        if len(hits):
            self.ref_count[hits] = hit_counts + 1
            self._append_blocks(request_id, hits)
            self._touch(hits)
            self._matched(int(hits[-1]))
        if needed > 0:
            self._grow(request_id, needed)
        if len(hits):
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
        ref_count = self.ref_count
        for r in int_list(request_ids):
            if self._held[r]:
                self._cache_full_blocks(r, computed[r])  # what its decodes filled
            owned = self.blocks_of.pop(r, None)
            self._block_buffers.pop(r, None)
            self._checked_blocks.pop(r, None)
            self._hashes.pop(r, None)
            self._held[r] = 0
            if owned is None or not len(owned):
                continue
            self._touch(owned)
            owned = owned[::-1]  # the last block goes first
            counts = ref_count[owned]
            ref_count[owned] = counts - 1  # a request holds a block once: no repeated index
            # Released: the blocks nobody else holds (a shared system prompt's are often held by others).
            last_holder = counts == 1
            released = owned if last_holder.all() else owned[last_holder]
            self.free_blocks += len(released)
            self.cached_free_blocks += int(np.count_nonzero(self.block_hash[released]))
            self._push_free_all(released)

    def take_decode_run_blocks(self, request_ids: list[int], spare_slots: list[int], num_steps: int,
                               steps_taken: int = 0) -> None:
        """KVCache.take_decode_run_blocks, with real blocks from the free queue (evicting what they cached;
        the blocks decodes fill are cached when the request leaves)."""
        for r, blocks in self._decode_run_growth(request_ids, spare_slots, num_steps, steps_taken):
            self._grow(r, blocks)

    # --- blocks ------------------------------------------------------------------------------------

    def _grow(self, request_id: int, new_blocks: int) -> None:
        """Give the request `new_blocks` blocks from the free list (the caller checked they are free)."""
        if new_blocks > self.free_blocks:
            raise AssertionError("KV blocks handed out beyond capacity")  # a caller skipped the free check
        taken = self._take_free_blocks(new_blocks)
        self.ref_count[taken] = 1
        self._append_blocks(request_id, taken)
        self.free_blocks -= new_blocks

    def _append_blocks(self, request_id: int, blocks: np.ndarray) -> None:
        """Add these blocks at the end of the request's block list (blocks_of and the held count)."""
        held = self._held[request_id]
        end = held + len(blocks)
        buffer = self._block_buffers.get(request_id)
        if buffer is None or len(buffer) < end:
            buffer = self._grown_buffer(request_id, end)
        buffer[held:end] = blocks
        self.blocks_of[request_id] = buffer[:end]
        self._held[request_id] = end

    def _grown_buffer(self, request_id: int, size: int) -> np.ndarray:
        # Room for the request's whole sequence up front, doubled if it ever needs more, so that its
        # decodes append in place; earlier views keep the old buffer.
        ints = self.requests.ints
        whole = -(-(ints.prompt_tokens[request_id] + ints.output_tokens[request_id]) // self.block_size)
        buffer = np.empty(max(size, whole, 2 * len(self.blocks_of.get(request_id, NO_BLOCKS))), dtype=np.int64)
        held = self._held[request_id]
        if held:
            buffer[:held] = self.blocks_of[request_id]
        self._block_buffers[request_id] = buffer
        return buffer

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
        stop = min(full, len(hashes[0]))
        if self._cache_blocks(owned, start, stop, hashes) < stop:
            full = len(owned)  # never offer this request's later blocks
        self._checked_blocks[request_id] = full

    # --- checks ------------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError unless the bookkeeping is consistent: reference counts match the requests'
        block lists and are never negative, a block is free exactly when nobody holds it, the cache index
        matches the blocks' hashes, and cached-unreferenced + in use + free-uncached = capacity."""
        counts = np.zeros(self.num_blocks, dtype=np.int64)
        for r, owned in self.blocks_of.items():
            assert self._held[r] == len(owned), f"request {r}: blocks_held {self._held[r]} != {len(owned)}"
            np.add.at(counts, owned, 1)
        assert np.array_equal(counts, self.ref_count), "reference counts differ from the requests' block lists"
        assert self.ref_count.min(initial=0) >= 0, "a negative reference count"
        free = self._free_set()
        assert len(free) == self.free_blocks, f"{len(free)} blocks in the free list, free_blocks={self.free_blocks}"
        is_free = np.zeros(self.num_blocks, dtype=bool)
        is_free[list(free)] = True
        assert np.array_equal(is_free, self.ref_count == 0), "a block both free and referenced, or neither"
        hashes = self.block_hash.tolist()
        assert all(hashes[b] == h for h, b in self.cached.items()), "cache index and block hashes differ"
        hashed = self.block_hash != NO_HASH
        assert np.count_nonzero(hashed) == len(self.cached), "a hashed block not in the index"
        cached_free = int(np.count_nonzero(hashed & is_free))
        assert cached_free == self.cached_free_blocks, f"cached free {cached_free} != {self.cached_free_blocks}"
        in_use = int(np.count_nonzero(counts > 0))
        free_uncached = int(np.count_nonzero(~hashed & is_free))
        assert cached_free + in_use + free_uncached == self.num_blocks, "blocks lost or counted twice"
