"""The fitted attention model evaluated on the simulator's hot path: one batch, or a run of decodes.

The fitted model is `time_ms = a.x + max_g(b_g.x)` over features.ATTENTION_FEATURES (times
exp(oblivious trees) when the kept family has them). Evaluating it through the generic feature list
costs dozens of small Python and numpy operations per call. Here the coefficients are regrouped once
by what the features depend on:

* a decode-only launch of n sequences depends on n, the KV tokens it streams (S = sum(kv) + n), its
  longest context (L = max(kv) + 1) and FA2's split choice; every other feature is zero. A decode run
  (step k at contexts kv + k) has S = S0 + n k and L = L0 + k, so all its steps cost a few array
  operations, and a single decode-only batch is a run of one step through the same code (the two
  paths agree bit for bit);
* a launch with a prefill chunk is costed from features.batch_attention_features (Python numbers) and
  one scalar dot product per branch.
"""
from __future__ import annotations

import numpy as np

from simulator.runtime.features import (
    ATTENTION_FEATURES,
    AttentionShape,
    batch_attention_features,
    decode_run_attention_features,
    linear_combination,
    sparse_coefficients,
)

_COLUMN = {name: j for j, name in enumerate(ATTENTION_FEATURES)}
# Features that vary in a decode-only launch (others are constants: launch = 1, num_decodes = n).
_DECODE_VARIABLES = ("decode_kv_tokens", "sm_load_tokens", "unsplit_decode_critical", "split_decode_critical",
                     "split_decode_blocks", "decode_list_bound")


class _Trees:
    """Exported oblivious trees (fit.export_attention) laid out for a vectorised evaluation."""

    def __init__(self, trees: dict):
        num_trees, depth = trees["features"].shape
        self.shape = (num_trees, depth)
        self.features = trees["features"].ravel()
        self.thresholds = trees["thresholds"].ravel()
        self.leaves = trees["leaf_values"].ravel()
        self.offsets = np.arange(num_trees) * 2**depth
        self.base = float(trees["base"][0])
        self.powers = (2 ** np.arange(depth - 1, -1, -1)).astype(np.uint8)
        if depth > 8:
            raise ValueError(f"trees deeper than 8 levels are not supported (got {depth})")

    def factor(self, X: np.ndarray) -> np.ndarray:
        """exp(boosted-tree correction) of attention feature rows X (rows, features)."""
        goes_right = (X[:, self.features] > self.thresholds).view(np.uint8).reshape(len(X), *self.shape)
        leaf = goes_right @ self.powers + self.offsets
        return np.exp(self.base + self.leaves[leaf].sum(axis=1))

    def factor_one(self, features: list) -> float:
        """factor() of one feature row given as a list: the same leaves, summed in the same order, with
        fewer and cheaper numpy calls (take instead of fancy indexing; a uint8 product gives each
        tree's leaf index, exact for depth <= 8). About 11 us instead of 15 on the development machine."""
        goes_right = np.array(features, dtype=np.float64).take(self.features) > self.thresholds
        leaf = goes_right.reshape(self.shape).view(np.uint8) @ self.powers
        return float(np.exp(self.base + self.leaves.take(leaf + self.offsets).sum()))


class AttentionTime:
    """Milliseconds of one layer's attention launch, from exported coefficients (and trees).

    coef, trees: the model of launches with a prefill chunk (and of every launch when decode_coef is
    None); decode_coef, decode_trees: the model fitted on decode-only launches alone.
    """

    def __init__(self, coef: np.ndarray, shape: AttentionShape, trees: dict | None = None,
                 decode_coef: np.ndarray | None = None, decode_trees: dict | None = None):
        self.coef = np.asarray(coef, dtype=np.float64)
        self.decode_coef = self.coef if decode_coef is None else np.asarray(decode_coef, dtype=np.float64)
        if decode_coef is None:
            decode_trees = trees
        self.shape = shape
        self._additive = sparse_coefficients(self.coef[0])
        self._branches = [sparse_coefficients(row) for row in self.coef[1:]]
        self._decode_additive = sparse_coefficients(self.decode_coef[0])
        self._decode_branches = [sparse_coefficients(row) for row in self.decode_coef[1:]]
        # Decode-only launches: per row (additive, then branches) the constant per launch, per sequence,
        # and (name, coefficient) of the varying features with a non-zero coefficient.
        self._decode_rows = []
        for row in self.decode_coef:
            variables = [(name, float(row[_COLUMN[name]])) for name in _DECODE_VARIABLES if row[_COLUMN[name]] != 0]
            self._decode_rows.append((float(row[_COLUMN["launch"]]), float(row[_COLUMN["num_decodes"]]), variables))
        # Fitted coefficients are non-negative (NNLS, bounded least squares) and so are the features:
        # then no time can be negative, the final clamp is skipped, and so are branches that are zero
        # for every decode-only launch (the prefill branches).
        self._may_be_negative = bool((self.decode_coef < 0).any())
        if not self._may_be_negative:
            branches = [row for row in self._decode_rows[1:] if row[0] or row[1] or row[2]]
            self._decode_rows = self._decode_rows[:1] + (branches or [(0.0, 0.0, [])])
        self._uses = {name for *_, variables in self._decode_rows for name, _ in variables}
        self._list_bound_used = "decode_list_bound" in self._uses
        self._blocks_per_sequence = shape.decode_blocks_per_sequence
        self._slots = shape.decode_slots
        self._steps = np.arange(256, dtype=np.int64)  # step indices of a run, sliced (never written)
        self._grouped = 0 < shape.kv_heads < shape.q_heads  # FA2 may split the KV only then
        self._trees = None if trees is None else _Trees(trees)
        self._decode_trees = None if decode_trees is None else _Trees(decode_trees)
        self._has_trees = self._trees is not None

    # ------------------------------------------------------------------ launches with a chunk

    def batch_ms(self, q_tokens: np.ndarray, kv_tokens: np.ndarray) -> tuple[float, int]:
        """(milliseconds, tokens in the batch) of one launch of any composition (q, kv: (n,) int arrays)."""
        num_tokens = int(np.add.reduce(q_tokens))
        if num_tokens == len(q_tokens):
            return self.decode_ms(kv_tokens), num_tokens
        features = batch_attention_features(q_tokens, kv_tokens, self.shape)
        t = self.chunked_ms(features)
        if self._has_trees:
            t = t * self._trees.factor_one(features)
        return t, num_tokens

    def chunked_ms(self, features: list) -> float:
        """Milliseconds of a launch with a prefill chunk, from its ATTENTION_FEATURES (no trees)."""
        t = linear_combination(self._additive, features) + max(
            [linear_combination(branch, features) for branch in self._branches])
        return t if t > 0.0 else 0.0  # noqa: FURB136 - hot path: a conditional is cheaper than max()

    # ------------------------------------------------------------------ decode-only launches
    # Two implementations of one formula: Python numbers for a single launch (a few microseconds), numpy
    # arrays for a run. They perform the same IEEE operations in the same order on the same exact integer
    # features, so a run's step k equals the single launch at contexts kv + k bit for bit (tested).

    def decode_ms(self, kv_tokens: np.ndarray) -> float:
        """Milliseconds of one decode-only launch at contexts kv_tokens."""
        if self._decode_trees is not None:
            return float(self._generic_decode_run_ms(kv_tokens, 1)[0])
        n = len(kv_tokens)
        streamed = int(np.add.reduce(kv_tokens)) + n
        longest = int(np.maximum.reduce(kv_tokens)) + 1
        values = {"decode_kv_tokens": streamed}
        if "sm_load_tokens" in self._uses:
            values["sm_load_tokens"] = max(longest, self.shape.q_heads * (2 * streamed) / (2 * self.shape.num_sms))
        splits, split_tokens = self._split(n, longest)
        if splits == 1:
            values["unsplit_decode_critical"] = longest
        else:
            values["split_decode_critical"] = min(longest, split_tokens)
            values["split_decode_blocks"] = n * splits
        if self._list_bound_used and splits == 1 and n * self._blocks_per_sequence > self._slots:
            # As features.decode_list_bound; where that is 0 the term is skipped (adding 0 changes no bit).
            values["decode_list_bound"] = longest + streamed * self._blocks_per_sequence / self._slots
        return self._decode_combination(n, values, max)

    def decode_run_ms(self, kv_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        """Milliseconds of `num_steps` decode-only launches, step k at contexts kv_tokens + k: (num_steps,)."""
        if self._decode_trees is not None:
            return self._generic_decode_run_ms(kv_tokens, num_steps)
        n = len(kv_tokens)
        if num_steps > len(self._steps):
            self._steps = np.arange(max(num_steps, 2 * len(self._steps)), dtype=np.int64)
        steps = self._steps[:num_steps]
        # Exact integer sums, as in features.decode_run_attention_features.
        streamed = n * steps + (int(np.add.reduce(kv_tokens)) + n)  # sum of kv + 1 at step k
        longest = steps + (int(np.maximum.reduce(kv_tokens)) + 1)
        values = {"decode_kv_tokens": streamed}
        if "sm_load_tokens" in self._uses:
            values["sm_load_tokens"] = np.maximum(longest, self.shape.q_heads * (2 * streamed) / (2 * self.shape.num_sms))
        splits, split_tokens = self._run_splits(n, longest, num_steps)
        if splits is None:  # no step is split
            values["unsplit_decode_critical"] = longest
        elif not isinstance(splits, np.ndarray):  # every step split alike (the run stays in one KV block)
            values["split_decode_critical"] = np.minimum(longest, split_tokens)
            values["split_decode_blocks"] = n * splits
        else:
            split = splits > 1
            values["unsplit_decode_critical"] = np.where(split, 0, longest)
            values["split_decode_critical"] = np.where(split, np.minimum(longest, split_tokens), 0)
            values["split_decode_blocks"] = np.where(split, n * splits, 0)
        # The bound needs more blocks than slots, which for packed heads is past FA2's splitting
        # threshold: it occurs in unsplit runs only.
        if self._list_bound_used and splits is None and n * self._blocks_per_sequence > self._slots:
            values["decode_list_bound"] = longest + streamed * self._blocks_per_sequence / self._slots
        t = self._decode_combination(n, values, np.maximum)
        return t if isinstance(t, np.ndarray) else np.full(num_steps, t)

    def _decode_combination(self, n: int, values: dict, maximum):
        """additive + max over branches of (per launch + per sequence x n + sum of c x values[name]);
        a feature absent from `values` is zero. Python numbers or arrays alike (maximum: max or np.maximum).

        Zero terms are skipped rather than added: with non-negative terms that changes no bit, and on
        arrays every skipped operation is a microsecond saved."""
        rows = []
        for launch, per_decode, variables in self._decode_rows:
            total = launch + per_decode * n
            for name, c in variables:
                if name in values:
                    term = c * values[name]
                    total = term if isinstance(total, float) and total == 0.0 else total + term
            rows.append(total)
        varying = [row for row in rows[1:] if not isinstance(row, float)]
        floor = max(row for row in rows[1:] if isinstance(row, float)) if len(varying) < len(rows) - 1 else 0.0
        if not varying:
            slowest = floor
        else:
            slowest = varying[0]
            for limit in varying[1:]:
                slowest = maximum(slowest, limit)
            if floor > 0.0 or self._may_be_negative:
                slowest = maximum(slowest, floor)
        t = slowest if isinstance(rows[0], float) and rows[0] == 0.0 else rows[0] + slowest
        return maximum(t, 0.0) if self._may_be_negative else t

    def _split(self, n: int, longest: int) -> tuple[int, int]:
        """FA2's (splits, KV tokens per split) of one decode-only launch; (1, longest) when it cannot split."""
        shape = self.shape
        # FA2 splits only when the grid (sequences x KV heads) fills under 80 % of the SM slots.
        if not self._grouped or n * shape.kv_heads >= 0.8 * 2 * shape.num_sms:
            return 1, longest
        return shape.decode_split(n, longest)

    def _run_splits(self, n: int, longest: np.ndarray, num_steps: int):
        """FA2's split choice over a run: (None, None) if no step is split; (splits, KV tokens per split)
        as numbers if every step is split alike; else both per step as arrays."""
        shape = self.shape
        if not self._grouped or n * shape.kv_heads >= 0.8 * 2 * shape.num_sms:
            return None, None
        # The choice depends on the longest context's KV blocks only: evaluate it once per block.
        block = shape.split_block_n
        first_block = (int(longest[0]) - 1) // block
        last_block = (int(longest[-1]) - 1) // block
        per_block = [self._split(n, (b + 1) * block) for b in range(first_block, last_block + 1)]
        if all(s == 1 for s, _ in per_block):
            return None, None
        if len(per_block) == 1:
            return per_block[0]
        block_of_step = (longest - 1) // block - first_block
        return (np.array([p[0] for p in per_block], dtype=np.int64)[block_of_step],
                np.array([p[1] for p in per_block], dtype=np.int64)[block_of_step])

    # ------------------------------------------------------------------ with boosted trees (slower)

    def _generic_decode_run_ms(self, kv_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        features = decode_run_attention_features(kv_tokens, num_steps, self.shape)
        limits = [linear_combination(branch, features) for branch in self._decode_branches]
        slowest = limits[0]
        for limit in limits[1:]:
            slowest = np.maximum(slowest, limit)
        t = linear_combination(self._decode_additive, features) + slowest
        X = np.column_stack([np.broadcast_to(np.asarray(f, dtype=np.float64), (num_steps,)) for f in features])
        return np.maximum(t * self._decode_trees.factor(X), 0.0)
