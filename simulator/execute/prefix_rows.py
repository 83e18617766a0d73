"""Real prefix reuse in execution: which K/V rows to copy so cached tokens are never recomputed.

The policies decide hits with the simulator's own prefix caches (simulator/prefix_cache.py,
simulator/radix_cache.py), which number their blocks 0..num_blocks-1. vLLM and SGLang point a request's
block table at the shared blocks; our runner keeps each request's K/V in one contiguous slot (FlashAttention
reads it in place, simulator/execute/slots.py), so instead the device holds a *block store*: rows
`store_start + b * block_size ...` keep the K/V of the cache's block b.

  after a step   every block a request filled in it is copied from the request's slot into the store
                 (whatever the cache does with it later, the store holds the KV its chain hash names)
  before a step  a request starting with cached tokens (a hit, or a recompute after preemption that
                 finds its own blocks) gets those blocks' rows copied from the store into its new slot

A hit on a block that another request of the same step is computing (vLLM caches a step's full prompt
blocks when it schedules the step, so a later request of that step can hit them) cannot come from the
store: vLLM's reader sees those K/V because each layer writes them before its attention runs. Ours are
copied the same way, slot to slot in each layer between the K/V write and the attention, and counted
(`same_step_blocks`).

Copies are device-to-device and are an artefact of the slot layout (an engine with block tables makes
none), so the runner reports their time apart from serving time, like CUDA-graph capture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.prefix_cache import NO_HASH, PrefixCachingKV
from simulator.request import RequestState

NO_ROWS = np.zeros(0, dtype=np.int64)


@dataclass
class StepCopies:
    """First rows of the blocks to copy for one step (PrefixRows.rows expands them to every row).

    store_src -> store_dst   from the block store into new slots, before the step
    layer_src -> layer_dst   slot to slot in each layer, after the layer wrote its K/V and before its
                             attention: blocks that another request of the step computes
    """

    store_src: list[int] = field(default_factory=list)
    store_dst: list[int] = field(default_factory=list)
    layer_src: list[int] = field(default_factory=list)
    layer_dst: list[int] = field(default_factory=list)


class PrefixRows:
    """Bookkeeping between a policy's prefix cache (`kv`) and the runner's slot and store rows."""

    def __init__(self, kv: PrefixCachingKV, requests: RequestState, store_start: int):
        self.kv, self.requests = kv, requests
        self.block_size = kv.block_size
        self.store_start = store_start
        self.store_tokens = kv.num_blocks * kv.block_size
        self.stored_hash: list[int | None] = [None] * kv.num_blocks  # chain hash of the K/V in store block b
        self.stored_upto: dict[int, int] = {}  # request -> its leading blocks whose K/V is in the store
        self.blocks_in = self.blocks_out = self.same_step_blocks = 0

    def rows(self, starts: list[int]) -> np.ndarray:
        """Every row of the blocks that start at `starts`."""
        if not starts:
            return NO_ROWS
        block = np.arange(self.block_size, dtype=np.int64)
        return (np.asarray(starts, dtype=np.int64)[:, None] + block).ravel()

    def _store_row(self, block: int) -> int:
        return self.store_start + block * self.block_size

    def before_step(self, ids: list[int], kv_tokens: list[int], num_tokens: list[int], fresh: list[bool],
                    slot_starts: list[int]) -> StepCopies:
        """What to copy for this step: the cached blocks of the requests whose slot is new (`fresh`) and
        who start with kv_tokens > 0 tokens already computed (a prefix hit)."""
        copies = StepCopies()
        kv, bs = self.kv, self.block_size
        in_flight = None  # block -> slot row of the request computing it this step (built when needed)
        for r, computed, new, start in zip(ids, kv_tokens, fresh, slot_starts):
            if not new:
                continue
            if computed % bs:
                raise RuntimeError(f"request {r} starts with {computed} cached tokens, not whole blocks")
            hit_blocks = computed // bs
            self.stored_upto[r] = hit_blocks
            self.blocks_in += hit_blocks
            hit = kv.blocks_of[r][:hit_blocks]
            for j, (block, h) in enumerate(zip(hit.tolist(), kv.block_hash[hit].tolist())):
                if h != NO_HASH and self.stored_hash[block] == h:
                    copies.store_src.append(self._store_row(block))
                    copies.store_dst.append(start + j * bs)
                    continue
                # Computed by another request of this very step: copied layer by layer once written.
                if in_flight is None:
                    in_flight = self._in_flight(ids, kv_tokens, num_tokens, slot_starts)
                if block not in in_flight:
                    raise RuntimeError(f"request {r} hit cached block {block}, whose K/V nobody computed")
                copies.layer_src.append(in_flight[block])
                copies.layer_dst.append(start + j * bs)
                self.same_step_blocks += 1
        return copies

    def _in_flight(self, ids, kv_tokens, num_tokens, slot_starts) -> dict[int, int]:
        """block -> first slot row, for every block the step's requests write tokens into."""
        kv, bs = self.kv, self.block_size
        out = {}
        for r, computed, new, start in zip(ids, kv_tokens, num_tokens, slot_starts):
            owned = kv.blocks_of[r].tolist()
            for j in range(computed // bs, min(-(-(computed + new) // bs), len(owned))):
                out.setdefault(owned[j], start + j * bs)
        return out

    def after_step(self, ids: list[int], kv_tokens: list[int], num_tokens: list[int],
                   slot_starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(slot rows, store rows) of every block the step filled: copied to the store after the step."""
        src, dst = [], []
        kv, bs = self.kv, self.block_size
        for r, computed, new, start in zip(ids, kv_tokens, num_tokens, slot_starts):
            full = (computed + new) // bs
            first = self.stored_upto.get(r, 0)
            if full <= first:
                continue
            # A full block's chain hash, where the content covers it (blocks within the request's tokens).
            owned, hashes = kv.blocks_of[r].tolist(), self.requests.content.hash_list(r, bs)
            last = min(full, len(owned))
            for j in range(first, last):
                block = owned[j]
                src.append(start + j * bs)
                dst.append(self._store_row(block))
                self.stored_hash[block] = hashes[j] if j < len(hashes) else None
            self.blocks_out += max(last - first, 0)
            self.stored_upto[r] = full
        return self.rows(src), self.rows(dst)

    def forget(self, request_id: int) -> None:
        """The request's slot is gone (finished or preempted)."""
        self.stored_upto.pop(request_id, None)

    def facts(self) -> dict:
        return {"store_tokens": self.store_tokens, "blocks_copied_in": self.blocks_in,
                "blocks_copied_out": self.blocks_out, "same_step_hit_blocks": self.same_step_blocks}


class ContentTokens:
    """Token ids that follow the requests' content (simulator/content.py), so that requests sharing their
    first k blocks feed the model the same k x block_size tokens, and a reused block's K/V is exactly what
    its reader would have computed. Ids come from the chain hash of the token's block and its place in it;
    tokens past the content's full blocks are the runner's own (-1 here)."""

    def __init__(self, requests: RequestState, block_size: int):
        self.requests, self.block_size = requests, block_size
        self._seeds: dict[int, tuple[np.ndarray, int]] = {}  # request -> (per-block seeds, tokens covered)

    def covered_tokens(self, request_id: int) -> int:
        """Tokens of the request (from its start) whose content is known: its full blocks with a hash."""
        return self._of(request_id)[1]

    def token_ids(self, request_id: int, positions: np.ndarray, vocab_size: int) -> np.ndarray:
        """Token ids of the request's tokens at `positions` (int64 array), -1 where its content is unknown."""
        seeds, covered = self._of(request_id)
        out = np.full(len(positions), -1, dtype=np.int64)
        known = positions < covered
        p = positions[known]
        out[known] = (seeds[p // self.block_size] % vocab_size + (p % self.block_size) * 7_919) % vocab_size
        return out

    def forget(self, request_id: int) -> None:
        self._seeds.pop(request_id, None)

    def _of(self, request_id: int) -> tuple[np.ndarray, int]:
        found = self._seeds.get(request_id)
        if found is None:
            ints = self.requests.ints
            length = ints.prompt_tokens[request_id] + ints.output_tokens[request_id]
            hashes = self.requests.content.hashes(request_id, self.block_size, length)
            # The hash's high bits, non-negative as int64; token_ids reduces them modulo the vocabulary.
            found = ((hashes >> np.uint64(2)).astype(np.int64), len(hashes) * self.block_size)
            self._seeds[request_id] = found
        return found
