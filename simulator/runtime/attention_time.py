"""The fitted attention model evaluated on the simulator's hot path: one batch, or a run of decodes.

The fitted model is `time_ms = a.x + max_g(b_g.x)` over features.ATTENTION_FEATURES (times
exp(oblivious trees) when the kept family has them). Evaluating it through the generic feature list
costs dozens of small Python and numpy operations per call, so:

* decode-only launches, and runs of them (step k at contexts kv + k), go through
  decode_attention.DecodeAttention: exact arithmetic, a few array operations a run, and a single launch
  equal bit for bit to the same step of a run;
* a launch with a prefill chunk is costed from features.batch_attention_features (Python numbers) and
  one scalar dot product per branch.
"""
from __future__ import annotations

import numpy as np

from simulator.runtime.decode_attention import DecodeAttention
from simulator.runtime.features import (
    AttentionShape,
    batch_attention_features,
    decode_run_attention_features,
    linear_combination,
    sparse_coefficients,
)


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
        self._decode = DecodeAttention(self.decode_coef, shape)
        self._trees = None if trees is None else _Trees(trees)
        self._decode_trees = None if decode_trees is None else _Trees(decode_trees)
        self._has_trees = self._trees is not None

    # ------------------------------------------------------------------ launches with a chunk

    def batch_ms(self, q_tokens, kv_tokens) -> tuple[float, int]:
        """(milliseconds, tokens in the batch) of one launch of any composition (q, kv: (n,) int arrays, or
        lists of a few ints as the simulator passes them)."""
        num_tokens = sum(q_tokens) if isinstance(q_tokens, list) else int(np.add.reduce(q_tokens))
        if num_tokens == len(q_tokens):
            return self.decode_ms(kv_tokens), num_tokens
        features = batch_attention_features(q_tokens, kv_tokens, self.shape)
        t = self.chunked_ms(features)
        if self._has_trees:
            t = t * self._trees.factor_one(features)
        return t, num_tokens

    def split_batch_ms(self, q_tokens, kv_tokens, gap_ms: float = 0.0) -> tuple[float, int]:
        """(milliseconds, tokens in the batch) of a batch launched split: its prefill chunks in one launch and
        its decodes in another, each priced as measured alone, plus `gap_ms` when both launch."""
        if isinstance(q_tokens, list):
            num_tokens = sum(q_tokens)
            if num_tokens == len(q_tokens):
                return self.decode_ms(kv_tokens), num_tokens
            chunk_q = [q for q in q_tokens if q > 1]
            chunk_kv = [kv for q, kv in zip(q_tokens, kv_tokens) if q > 1]
            decode_kv = [kv for q, kv in zip(q_tokens, kv_tokens) if q == 1]
        else:
            num_tokens = int(np.add.reduce(q_tokens))
            if num_tokens == len(q_tokens):
                return self.decode_ms(kv_tokens), num_tokens
            chunks = q_tokens > 1
            chunk_q, chunk_kv, decode_kv = q_tokens[chunks], kv_tokens[chunks], kv_tokens[~chunks]
        t = self.chunks_ms(chunk_q, chunk_kv)
        if len(decode_kv):
            t += self.decode_ms(decode_kv) + gap_ms
        return t, num_tokens

    def chunks_ms(self, q_tokens, kv_tokens) -> float:
        """Milliseconds of one launch holding prefill chunks only (every q > 1)."""
        features = batch_attention_features(q_tokens, kv_tokens, self.shape)
        t = self.chunked_ms(features)
        return t * self._trees.factor_one(features) if self._has_trees else t

    def chunked_ms(self, features: list) -> float:
        """Milliseconds of a launch with a prefill chunk, from its ATTENTION_FEATURES (no trees)."""
        t = linear_combination(self._additive, features) + max(
            [linear_combination(branch, features) for branch in self._branches])
        return t if t > 0.0 else 0.0  # noqa: FURB136 - hot path: a conditional is cheaper than max()

    # ------------------------------------------------------------------ decode-only launches

    def decode_ms(self, kv_tokens: np.ndarray) -> float:
        """Milliseconds of one decode-only launch at contexts kv_tokens."""
        if self._decode_trees is not None:
            return float(self._generic_decode_run_ms(kv_tokens, 1)[0])
        return self._decode.ms(kv_tokens)

    def decode_run_ms(self, kv_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        """Milliseconds of `num_steps` decode-only launches, step k at contexts kv_tokens + k: (num_steps,).
        Equal to decode_ms step by step, bit for bit (decode_attention.py says why)."""
        if self._decode_trees is not None:
            return self._generic_decode_run_ms(kv_tokens, num_steps)
        return self._decode.run_ms(kv_tokens, num_steps)

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
