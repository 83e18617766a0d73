"""What each request's tokens are, so that a prefix cache can tell repeated text from new text.

The simulator never sees real tokens. A workload that knows which prompts share text (a Mooncake trace's
`hash_ids`, a multi-turn session resending its conversation, a shared system prompt) describes every
request's token sequence as a list of *keys*, one per unit of `unit_tokens` tokens: two requests whose
first k keys are equal share their first k x unit_tokens tokens. Keys cover the prompt and, where the
workload knows it (a multi-turn session's next turn resends the answer), the output; units past the
keys given are text no other request has. The last key may cover a partial unit.

Caches work on blocks of the engine's `block_size` tokens and identify a full block by a hash of its own
keys and of every block before it (as vLLM's automatic prefix caching does), so equal hashes mean equal
prefixes. `block_hashes` computes those hashes for a whole sequence at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.config import ConfigError

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
# A polynomial hash over the mixed keys, base B (odd, so invertible mod 2^64): the hash of blocks 0..j is
# sum_i m_i B^(j-i), computed for every j at once as B^j * cumsum(m_i B^-i). Keys are mixed first
# (splitmix64) so that structured keys (0, 1, 2, ...) do not collide.
_BASE = np.uint64(0x9E3779B97F4A7C15)
_BASE_INVERSE = np.uint64(pow(int(_BASE), -1, 2**64))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit value of each uint64 (Steele et al.'s SplitMix64 finaliser)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2^64."""
    out = np.empty(n, dtype=np.uint64)
    if n:
        out[0] = 1
        with np.errstate(over="ignore"):
            for i in range(1, n):  # sequential, but only as long as the longest sequence, and cached
                out[i] = out[i - 1] * base
    return out


_POWERS: dict[bool, np.ndarray] = {True: np.ones(0, np.uint64), False: np.ones(0, np.uint64)}


def _cached_powers(inverse: bool, n: int) -> np.ndarray:
    have = _POWERS[inverse]
    if len(have) < n:
        have = _powers(_BASE_INVERSE if inverse else _BASE, max(n, 2 * len(have)))
        _POWERS[inverse] = have
    return have[:n]


def block_keys(keys: np.ndarray, unit_tokens: int, block_size: int, num_full_blocks: int) -> np.ndarray:
    """One uint64 per full engine block (the first `num_full_blocks`), from the sequence's unit keys.

    unit_tokens a multiple of block_size: a unit covers several blocks, each keyed by (unit key, place in
    the unit). block_size a multiple of unit_tokens: a block covers several units, keyed by all of them.
    Blocks past the keys given get keys nobody else has (their hash is then unique to this sequence's
    chain only if the caller never offers them: `block_hashes` stops at the keys given).
    """
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    if unit_tokens % block_size == 0:
        per_unit = unit_tokens // block_size
        j = np.arange(num_full_blocks, dtype=np.uint64)
        unit = (j // np.uint64(per_unit)).astype(np.int64)
        with np.errstate(over="ignore"):
            return _splitmix64(keys[unit]) ^ _splitmix64(j % np.uint64(per_unit) + np.uint64(1 << 40))
    per_block = block_size // unit_tokens
    mixed = _splitmix64(keys[: num_full_blocks * per_block]).reshape(num_full_blocks, per_block)
    with np.errstate(over="ignore"):
        weights = _cached_powers(False, per_block)
        return _splitmix64((mixed * weights).sum(axis=1, dtype=np.uint64))


def block_hashes(keys: np.ndarray, unit_tokens: int, block_size: int, num_tokens: int) -> np.ndarray:
    """Chain hashes (uint64) of the full blocks among the first `num_tokens` tokens that the keys cover.

    Hash j depends on the tokens of blocks 0..j, so two sequences share hash j exactly when they share
    their first (j + 1) x block_size tokens. A block that is not full, or not wholly covered by the keys
    (the last key may cover a partial unit of `num_tokens` tokens), gets no hash and is never shared.
    """
    covered_tokens = min(num_tokens, len(keys) * unit_tokens)
    n = covered_tokens // block_size
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    mixed = block_keys(keys, unit_tokens, block_size, n)
    with np.errstate(over="ignore"):
        prefix_sums = np.cumsum(mixed * _cached_powers(True, n), dtype=np.uint64)
        return _splitmix64(prefix_sums * _cached_powers(False, n))


MEMO_REQUESTS = 4096  # requests whose block hashes TokenContent keeps


@dataclass(frozen=True)
class TokenContent:
    """The token content of every request of a workload (aligned with its arrays, arrival order).

    keys[i] is an int64 array: request i's token sequence in units of `unit_tokens` tokens, prompt first.
    A workload without content (the length-only traces) has none, and no request shares a prefix.
    """

    unit_tokens: int
    keys: list[np.ndarray]
    # (request, block size) -> hashes of all the request's keys, for the requests asked about last: a router
    # asks every replica about a new request and its cache asks again at admission, one hashing serves all.
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def check_block_size(self, block_size: int, field: str = "cluster.block_size") -> None:
        """Raise ConfigError unless blocks of `block_size` tokens tile the workload's units."""
        u = self.unit_tokens
        if u % block_size and block_size % u:
            raise ConfigError(
                f"{field}={block_size} does not tile the workload's {u}-token content units (prefix caching "
                f"needs one to be a multiple of the other); use a block size dividing {u}")

    def hashes(self, request_id: int, block_size: int, num_tokens: int) -> np.ndarray:
        """block_hashes of request `request_id`'s first `num_tokens` tokens (hash j depends on blocks 0..j
        alone, so they are the leading part of the hashes of all its keys)."""
        every = self._all_hashes(request_id, block_size)[0]
        return every[: min(num_tokens, len(self.keys[request_id]) * self.unit_tokens) // block_size]

    def hash_list(self, request_id: int, block_size: int) -> list[int]:
        """The hashes of every block the request's keys cover, as Python ints (what the caches' dictionaries
        are keyed by); its first n are `hashes` of n x block_size tokens. Shared: never change it."""
        return self._all_hashes(request_id, block_size)[1]

    def _all_hashes(self, request_id: int, block_size: int) -> tuple[np.ndarray, list[int]]:
        memo_key = (request_id, block_size)
        found = self._memo.get(memo_key)
        if found is None:
            keys = self.keys[request_id]
            every = block_hashes(keys, self.unit_tokens, block_size, len(keys) * self.unit_tokens)
            found = (every, every.tolist())
            if len(self._memo) >= MEMO_REQUESTS:
                del self._memo[next(iter(self._memo))]  # the request asked about first
            self._memo[memo_key] = found
        return found

    def subset(self, rows: np.ndarray) -> TokenContent:
        """The content of the requests at `rows` (an index array), in that order."""
        return TokenContent(self.unit_tokens, [self.keys[i] for i in np.asarray(rows).tolist()])
