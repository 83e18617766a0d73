"""Decode-only attention launches in exact arithmetic: a whole run of decodes in a few array operations.

A decode-only launch of n sequences depends on n, the KV tokens it streams (S = sum(kv) + n), its
longest context (L = max(kv) + 1) and FlashAttention-2's split choice (features.py). The fitted model of
such launches is a combination of the features, each linear in S and L or the max/min of two linear
terms (sm_load_tokens, split_decode_critical). Over a run of decodes, step k has S = S0 + n k and
L = L0 + k, so each term is linear in k: the run costs `base + slope * k` plus at most two maxima, a
handful of numpy operations however many steps it has (evaluating the features step by step took ~40
numpy operations per run).

Regrouping must not change a bit: the simulator's decode-run fast path has to give what stepping one
iteration at a time gives, and floating-point sums are not associative. So the coefficients are
rounded to multiples of QUANTUM_MS = 2^-46 ms. Every product of such a coefficient and an integer, and
every sum of such products, is then an exact multiple of the quantum while it stays below
EXACT_BELOW_MS = 2^7 ms, and the order of the operations no longer matters. One layer's decode launch
streams at most the KV cache (~1M tokens at ~1e-6 ms each on an H100: ~1 ms), far below that bound.
The rounding moves a coefficient by at most 2^-47 ms per token (or sequence, or block): predicted
iterations of the six shipped models change by under 3e-8 of their time (a few nanoseconds).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.runtime.features import ATTENTION_FEATURES, AttentionShape

QUANTUM_MS = 2.0**-46
EXACT_BELOW_MS = 2.0**7


def exact(coefficient: float) -> float:
    """`coefficient` rounded to a multiple of QUANTUM_MS (products with integers stay exact)."""
    return round(coefficient / QUANTUM_MS) * QUANTUM_MS


def _pair(c: float, x_coefficient: float, y_coefficient: float):
    """c * max(x, y) as (max or min, exact c * x coefficient, exact c * y coefficient): for c < 0 the
    max of the scaled terms becomes their min."""
    return (max if c >= 0 else min), exact(c * x_coefficient), exact(c * y_coefficient)


@dataclass(frozen=True)
class DecodeTerms:
    """One row of the decode-only model (its additive part, or one branch) as exact coefficients.

    The row's milliseconds are launch + per_sequence n + streamed S, plus for an unsplit launch
    unsplit_longest L (and list_longest L + list_streamed S when its blocks outnumber the GPU's slots),
    plus for a split launch split_blocks n splits + split_longest min(L, KV tokens per split), plus
    sm_max(sm_longest L, sm_streamed S).
    """

    launch: float
    per_sequence: float
    streamed: float
    unsplit_longest: float
    list_longest: float
    list_streamed: float
    split_blocks: float
    split_min: object  # min (or max for a negative coefficient) over (split_longest L, split_longest tokens)
    split_longest: float
    sm_max: object  # max (or min for a negative coefficient) over (sm_longest L, sm_streamed S)
    sm_longest: float
    sm_streamed: float

    @classmethod
    def from_row(cls, row: np.ndarray, shape: AttentionShape) -> DecodeTerms:
        """From one row of fitted coefficients over features.ATTENTION_FEATURES."""
        c = {name: float(row[j]) for j, name in enumerate(ATTENTION_FEATURES)}
        # sm_load_tokens = max(L, q_heads 2S / (2 num_sms)); decode_list_bound = L + S blocks / slots.
        sm_max, sm_longest, sm_streamed = _pair(c["sm_load_tokens"], 1.0, shape.q_heads / shape.num_sms)
        split_min = min if c["split_decode_critical"] >= 0 else max
        list_c = c["decode_list_bound"]
        return cls(
            launch=exact(c["launch"]), per_sequence=exact(c["num_decodes"]), streamed=exact(c["decode_kv_tokens"]),
            unsplit_longest=exact(c["unsplit_decode_critical"]), list_longest=exact(list_c),
            list_streamed=exact(list_c * shape.decode_blocks_per_sequence / shape.decode_slots),
            split_blocks=exact(c["split_decode_blocks"]), split_min=split_min,
            split_longest=exact(c["split_decode_critical"]),
            sm_max=sm_max, sm_longest=sm_longest, sm_streamed=sm_streamed,
        )

    @property
    def is_zero(self) -> bool:
        """Every coefficient is zero (the min/max choices aside)."""
        return not any(value for value in vars(self).values() if isinstance(value, float))

    def linear(self, n: int, splits: int, list_bound: bool) -> tuple[float, float, float]:
        """(constant, coefficient of S, coefficient of L) of this row's linear terms for a launch of n
        sequences split `splits` ways (list_bound: an unsplit launch with more blocks than slots)."""
        constant = self.launch + self.per_sequence * n
        if splits > 1:
            return constant + self.split_blocks * (n * splits), self.streamed, 0.0
        if list_bound:
            return constant, self.streamed + self.list_streamed, self.unsplit_longest + self.list_longest
        return constant, self.streamed, self.unsplit_longest

    def ms(self, n: int, streamed: int, longest: int, splits: int, split_tokens: int, list_bound: bool) -> float:
        """Milliseconds of one launch (Python numbers)."""
        constant, per_streamed, per_longest = self.linear(n, splits, list_bound)
        t = constant + per_streamed * streamed + per_longest * longest
        if self.sm_longest or self.sm_streamed:
            t += self.sm_max(self.sm_longest * longest, self.sm_streamed * streamed)
        if splits > 1 and self.split_longest:
            t += self.split_min(self.split_longest * longest, self.split_longest * split_tokens)
        return t

    def run_ms(self, steps: np.ndarray, n: int, streamed: int, longest: int, splits: int, split_tokens: int,
               list_bound: bool) -> np.ndarray:
        """Milliseconds of the launches at steps `steps` of a run that starts with S = streamed and
        L = longest (S grows by n a step, L by 1), all with the same split choice. Equal to `ms` at each
        step bit for bit: every operation is exact."""
        constant, per_streamed, per_longest = self.linear(n, splits, list_bound)
        t = steps * (per_streamed * n + per_longest) + (constant + per_streamed * streamed + per_longest * longest)
        if self.sm_longest or self.sm_streamed:
            maximum = np.maximum if self.sm_max is max else np.minimum
            t += maximum(steps * self.sm_longest + self.sm_longest * longest,
                         steps * (self.sm_streamed * n) + self.sm_streamed * streamed)
        if splits > 1 and self.split_longest:
            minimum = np.minimum if self.split_min is min else np.maximum
            t += minimum(steps * self.split_longest + self.split_longest * longest,
                         self.split_longest * split_tokens)
        return t


class DecodeAttention:
    """Milliseconds of one layer's decode-only attention launches: additive row + max over branch rows
    (rows of fitted coefficients over features.ATTENTION_FEATURES, the additive row first)."""

    def __init__(self, coef: np.ndarray, shape: AttentionShape):
        rows = [DecodeTerms.from_row(row, shape) for row in np.asarray(coef, dtype=np.float64)]
        self.additive = rows[0]
        # Branches that are zero for every decode-only launch (the prefill terms' branches) change nothing
        # when every coefficient is non-negative: skip them then.
        self.may_be_negative = bool((np.asarray(coef) < 0).any())
        self.branches = [row for row in rows[1:] if self.may_be_negative or not row.is_zero]
        self.shape = shape
        self._grouped = 0 < shape.kv_heads < shape.q_heads  # FA2 may split the KV only then
        self._steps = np.arange(256, dtype=np.int64)  # step indices of a run, sliced (never written)

    def ms(self, kv_tokens) -> float:
        """Milliseconds of one decode-only launch at contexts kv_tokens (an int array or list)."""
        n = len(kv_tokens)
        if isinstance(kv_tokens, list):
            streamed, longest = sum(kv_tokens) + n, max(kv_tokens) + 1
        else:
            streamed = int(np.add.reduce(kv_tokens)) + n
            longest = int(np.maximum.reduce(kv_tokens)) + 1
        splits, split_tokens = self._split(n, longest)
        args = (n, streamed, longest, splits, split_tokens, self._list_bound(n, splits))
        t = self.additive.ms(*args)
        if self.branches:
            t += max(branch.ms(*args) for branch in self.branches)
        return max(t, 0.0) if self.may_be_negative else t

    def run_ms(self, kv_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        """Milliseconds of `num_steps` decode-only launches, step k at contexts kv_tokens + k: (num_steps,)."""
        n = len(kv_tokens)
        if num_steps == 0:
            return np.zeros(0)
        if num_steps > len(self._steps):
            self._steps = np.arange(max(num_steps, 2 * len(self._steps)), dtype=np.int64)
        streamed = int(np.add.reduce(kv_tokens)) + n
        longest = int(np.maximum.reduce(kv_tokens)) + 1
        parts = [self._segment_ms(self._steps[first:last], n, streamed, longest, splits, split_tokens)
                 for first, last, splits, split_tokens in self._segments(n, longest, num_steps)]
        t = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.maximum(t, 0.0) if self.may_be_negative else t

    def _segment_ms(self, steps: np.ndarray, n: int, streamed: int, longest: int, splits: int,
                    split_tokens: int) -> np.ndarray:
        args = (steps, n, streamed, longest, splits, split_tokens, self._list_bound(n, splits))
        t = self.additive.run_ms(*args)
        if self.branches:
            slowest = self.branches[0].run_ms(*args)
            for branch in self.branches[1:]:
                slowest = np.maximum(slowest, branch.run_ms(*args))
            t = t + slowest
        return t

    def _list_bound(self, n: int, splits: int) -> bool:
        """features.decode_list_bound applies: an unsplit launch whose blocks outnumber the slots."""
        return splits == 1 and n * self.shape.decode_blocks_per_sequence > self.shape.decode_slots

    def _may_split(self, n: int) -> bool:
        """FA2 splits the KV only with grouped queries and a grid (sequences x KV heads) that fills under
        80 % of the SM slots."""
        return self._grouped and n * self.shape.kv_heads < 0.8 * 2 * self.shape.num_sms

    def _split(self, n: int, longest: int) -> tuple[int, int]:
        """FA2's (splits, KV tokens per split) of one decode-only launch; (1, longest) when it cannot split."""
        if not self._may_split(n):
            return 1, longest
        return self.shape.decode_split(n, longest)

    def _segments(self, n: int, longest: int, num_steps: int) -> list[tuple[int, int, int, int]]:
        """(first step, end step, splits, KV tokens per split) of the run's stretches with one split choice.
        The choice depends on the longest context's KV blocks only, so it changes at most once a block."""
        if not self._may_split(n):
            return [(0, num_steps, 1, 0)]
        block = self.shape.split_block_n
        segments, first = [], 0
        while first < num_steps:
            block_index = (longest + first - 1) // block  # the block of the longest context at this step
            last = min(num_steps, (block_index + 1) * block - longest + 1)
            splits, split_tokens = self.shape.decode_split(n, (block_index + 1) * block)
            segments.append((first, last, splits, split_tokens))
            first = last
        return segments
