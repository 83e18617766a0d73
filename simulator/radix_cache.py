"""SGLang's radix cache (python/sglang/srt/mem_cache/radix_cache.py): a tree of cached prefixes, evicted
leaf node first, least recently used first.

SGLang keeps every computed sequence in a radix tree of token runs; a new request matches the longest
cached path from the root, nodes a running request uses are locked, and when memory runs out the least
recently used unlocked leaf nodes are evicted, each whole (a shared prefix outlives every branch hanging
from it). A node is the run one insertion added, split where another insertion branches off or a match
ends. Memory nobody caches is used before any cached KV is evicted. Checked request by request against
SGLang's own cache: bench/sglang_radix_check.py.

Approximation: we keep the cluster's KV block as SGLang's page (SGLang's default page is one token), so
the tree is made of whole blocks, linked by the chain hashes of simulator/content.py, and a match ends
at a block boundary. Content is only known per unit key (simulator/content.py), so token-level matching
could not go finer than a unit anyway; with units that are multiples of the block (a Mooncake trace's
512-token hash ids) the match is the one SGLang finds. Only the last, partial block of a match is lost.
"""
from __future__ import annotations

import heapq

import numpy as np

from simulator.prefix_cache import NO_HASH, PrefixCachingKV


class RadixCache(PrefixCachingKV):
    """A PrefixCachingKV whose cached blocks form a tree (a block's parent caches the block before it)
    and whose evictions take the least recently used unreferenced leaf node, whole.

    Its tree work goes block by block, reading and writing the reference counts and hashes through
    memoryviews (Python ints) rather than numpy's slower scalar indexing."""

    def _start_free_list(self, num_blocks: int) -> None:
        self._uncached_free = list(range(num_blocks - 1, -1, -1))  # a stack, block 0 on top
        self._parent = [-1] * num_blocks  # the cached block before this one (-1: the root, or uncached)
        self._children = [0] * num_blocks  # cached blocks whose parent this is
        self._last_used = [0] * num_blocks
        # SGLang's tree nodes are runs of tokens: the blocks one insertion added, split where another
        # insertion branches off or a match ends. _next_in_node[b]: the block after b in b's node (-1: b
        # ends its node). Eviction takes a whole leaf node, as SGLang's does.
        self._next_in_node = [-1] * num_blocks
        self._clock = 0
        # (last used, block) of unreferenced cached leaves; entries whose block has changed since are
        # skipped when popped (cheaper than removing them from the heap).
        self._leaves: list[tuple[int, int]] = []

    def _pop_free(self) -> int:
        if self._uncached_free:
            return self._uncached_free.pop()
        while True:
            last_used, block = heapq.heappop(self._leaves)
            if self._is_evictable_leaf(block) and self._last_used[block] == last_used:
                return block

    def _is_evictable_leaf(self, block: int) -> bool:
        return self._ref_items[block] == 0 and self._hash_items[block] != NO_HASH and self._children[block] == 0

    def _push_free(self, block: int) -> None:
        if self._hash_items[block] == NO_HASH:
            self._uncached_free.append(block)
        elif self._children[block] == 0:
            heapq.heappush(self._leaves, (self._last_used[block], block))

    def _push_free_all(self, blocks: np.ndarray) -> None:
        for block in blocks.tolist():
            self._push_free(block)

    def _unfree_all(self, blocks: np.ndarray) -> None:
        pass  # a hit block's entry among the leaves, if any, is skipped when popped

    def _touch(self, blocks: np.ndarray) -> None:
        self._clock += 1
        for block in blocks.tolist():
            self._last_used[block] = self._clock

    def _cached_unreferenced(self) -> list[int]:
        """The cached blocks nobody holds, by block number."""
        return np.flatnonzero((self.ref_count == 0) & (self.block_hash != NO_HASH)).tolist()

    def _free_set(self) -> set[int]:
        return set(self._uncached_free) | set(self._cached_unreferenced())

    def _take_free_blocks(self, count: int) -> np.ndarray:
        # One at a time: evicting a leaf node can make its parent the next leaf to go.
        taken = []
        for _ in range(count):
            block = self._pop_free()
            if self._hash_items[block] != NO_HASH:
                self._evict_node(block)
            taken.append(block)
        return np.array(taken, dtype=np.int64)

    def _evict_node(self, leaf: int) -> None:
        """Evict the leaf block and the rest of its node, last block first, as SGLang frees a leaf node
        whole however few tokens it needs; the node's other blocks become free blocks caching nothing."""
        block = leaf
        while True:
            parent = self._parent[block]
            in_node = parent >= 0 and self._next_in_node[parent] == block
            self._evict(block)
            if block != leaf:
                self._uncached_free.append(block)
            if not in_node or self._ref_items[parent] or self._children[parent]:
                return
            block = parent

    def free_queue_order(self) -> list[int]:
        """The free blocks: uncached ones in the order they would be handed out, then cached ones by block."""
        return list(reversed(self._uncached_free)) + self._cached_unreferenced()

    def _cache_blocks(self, owned: np.ndarray, start: int, stop: int, hashes: tuple[list[int], np.ndarray]) -> int:
        blocks = owned[start:stop].tolist()
        parents = [int(owned[start - 1]) if start else -1] + blocks[:-1]
        for j, block, parent, hash_ in zip(range(start, stop), blocks, parents, hashes[0][start:stop]):
            if not self._cache_block(block, parent, hash_):
                return j
            if parent >= 0:
                # One insertion is one node; its first block starts a node under parent, which ends there
                # (SGLang splits a node where a new branch leaves it).
                self._next_in_node[parent] = block if j > start else -1
        return stop

    def _matched(self, block: int) -> None:
        self._next_in_node[block] = -1  # SGLang splits the node where a match ends

    def _cache_block(self, block: int, parent: int, hash_: int) -> bool:
        # A block joins the tree under the request's own previous block (parent; -1 for its first); if
        # that one is not in the tree (another copy is), the rest of this request's sequence stays out of
        # it, as a branch would have no parent. A node referenced by a request then always has referenced
        # ancestors.
        if hash_ in self.cached or self._hash_items[block] != NO_HASH:
            return False
        if parent >= 0 and self._hash_items[parent] == NO_HASH:
            return False
        self.cached[hash_] = block
        self._hash_items[block] = hash_
        self._parent[block] = parent
        if parent >= 0:
            self._children[parent] += 1
        self._last_used[block] = self._clock
        return True

    def _evict(self, block: int) -> None:
        super()._evict(block)
        parent = self._parent[block]
        self._parent[block] = -1
        self._next_in_node[block] = -1
        if parent >= 0:
            self._children[parent] -= 1
            if self._is_evictable_leaf(parent):
                heapq.heappush(self._leaves, (self._last_used[parent], parent))

    def check_invariants(self) -> None:
        """PrefixCachingKV.check_invariants, and the tree: child counts match parents, every cached
        block's parent is cached, and a referenced block's ancestors are referenced."""
        super().check_invariants()
        children = [0] * self.num_blocks
        for block, parent in enumerate(self._parent):
            if parent >= 0:
                assert self.block_hash[block] != NO_HASH and self.block_hash[parent] != NO_HASH, \
                    f"block {block} in the tree under an uncached parent"
                assert self.ref_count[block] == 0 or self.ref_count[parent] > 0, \
                    f"block {block} is referenced but its parent {parent} is not"
                children[parent] += 1
        assert children == self._children, "child counts differ from the tree"
        for block, after in enumerate(self._next_in_node):
            if after >= 0:
                assert self._parent[after] == block and self.block_hash[block] != NO_HASH, \
                    f"block {after} continues block {block}'s node but is not its cached child"
