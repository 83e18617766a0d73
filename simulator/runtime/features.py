"""Physics features of the work an op or an attention launch does.

Token-wise ops (GEMMs, norms, activation, ...) depend on one number, the tokens processed; their
features are that count, the FLOPs and the bytes the op must move (as the profiler computed them, read
back as exact affine functions of the token count) and the roofline time at the GPU's datasheet peaks.

An attention launch depends on its whole batch composition. Its features are sums over the sequences
of the work a FlashAttention-style kernel does, split by kind so a mixed batch is the sum of its parts:
score entries a prefill chunk computes (q * kv_prefix + q(q+1)/2, i.e. FLOPs), KV tokens a decode reads,
KV tiles prefill query blocks re-read, Q/O tokens, sequence counts, and two terms for a GPU that is
not full: the longest sequence (its thread block is the critical path) and the work per SM when the
launch fills the GPU. All in tokens (or token pairs) of one layer on one tensor-parallel shard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Columns of the attention feature matrix, in order (see attention_features).
ATTENTION_FEATURES = [
    "launch",             # 1: one kernel launch
    "prefill_pairs",      # sum over prefill chunks of q*kv + q(q+1)/2 (score entries; FLOPs / (4 hd heads))
    "decode_kv_tokens",   # sum over decodes of kv + 1 (KV tokens each decode streams from HBM)
    "prefill_kv_reads",   # sum over chunks of ceil(q/block_m) * (kv + q/2): KV tokens query blocks re-read
    "prefill_q_tokens",   # sum of chunk lengths (Q read, O written, softmax rows)
    "num_decodes",
    "num_prefills",
    "max_context_tokens",  # longest sequence: its last query block is the critical path
    "sm_load_tokens",      # max(critical path, total query-block work / SMs): time when the GPU is full
]
PREFILL_TERMS = ("prefill_pairs", "prefill_kv_reads", "prefill_q_tokens", "num_prefills")
DECODE_TERMS = ("decode_kv_tokens", "num_decodes")


@dataclass(frozen=True)
class AttentionShape:
    """What the attention kernel of one layer on one shard looks like."""

    q_heads: int  # query heads on this shard
    block_m: int = 128  # query rows per thread block (FlashAttention-2 forward, head_dim 128)
    num_sms: int = 132  # streaming multiprocessors (H100 SXM / H200: 132)


# Both functions below compute every feature from exact integer sums, in the same order, so the
# single-batch path and the vectorised decode-run path give bit-identical features.


def batch_attention_features(q_tokens: np.ndarray, kv_tokens: np.ndarray, shape: AttentionShape) -> list:
    """ATTENTION_FEATURES of one launch (q_tokens, kv_tokens: (n,) int arrays), as Python numbers.

    The hot path of the simulator: a handful of numpy reductions, then scalar arithmetic over the
    (few) prefill chunks only. The batch's token count is features[4] + features[5] (chunk tokens plus
    one per decode).
    """
    n = len(q_tokens)
    num_tokens = int(np.add.reduce(q_tokens))
    kv_sum = int(np.add.reduce(kv_tokens))
    kv_max = int(np.maximum.reduce(kv_tokens))
    if num_tokens == n:  # decode-only: every q is 1
        work2 = 2 * kv_sum + 2 * n
        return [1.0, 0, kv_sum + n, 0, 0, n, 0, kv_max + 1,
                max(kv_max + 1, shape.q_heads * work2 / (2 * shape.num_sms))]
    prefill = (q_tokens > 1).nonzero()[0]
    pairs = reads2 = prefill_q = prefill_kv = prefill_work2 = 0
    max_ctx = kv_max + 1  # >= every decode's context; a prefill's own is checked below
    for q, kv in zip(q_tokens[prefill].tolist(), kv_tokens[prefill].tolist()):
        blocks = -(-q // shape.block_m)
        pairs += q * kv + q * (q + 1) // 2
        reads2 += blocks * (2 * kv + q)
        prefill_q += q
        prefill_kv += kv
        prefill_work2 += 2 * blocks * kv + q * (blocks + 1)
        max_ctx = max(max_ctx, q + kv)
    num_prefills = len(prefill)
    num_decodes = n - num_prefills
    decode_kv = kv_sum - prefill_kv + num_decodes
    work2 = 2 * decode_kv + prefill_work2
    return [1.0, pairs, decode_kv, reads2 / 2, prefill_q, num_decodes, num_prefills, max_ctx,
            max(max_ctx, shape.q_heads * work2 / (2 * shape.num_sms))]


def decode_run_attention_features(kv_tokens: np.ndarray, num_steps: int, shape: AttentionShape) -> list:
    """ATTENTION_FEATURES of `num_steps` decode-only launches of the same sequences, step k at
    contexts kv_tokens + k: a list of per-feature arrays of length num_steps (constants as numbers)."""
    n = len(kv_tokens)
    steps = np.arange(num_steps, dtype=np.int64)
    kv_sum = int(kv_tokens.sum()) + n * steps  # exact: sum(kv + k) = sum(kv) + n k
    kv_max = int(kv_tokens.max()) + steps
    work2 = 2 * kv_sum + 2 * n
    return [1.0, 0, kv_sum + n, 0, 0, n, 0, kv_max + 1,
            np.maximum(kv_max + 1, shape.q_heads * work2 / (2 * shape.num_sms))]


def attention_features(q_tokens: np.ndarray, kv_tokens: np.ndarray, shape: AttentionShape) -> np.ndarray:
    """batch_attention_features as a float64 row vector (1, len(ATTENTION_FEATURES))."""
    q = np.asarray(q_tokens, dtype=np.int64)
    kv = np.asarray(kv_tokens, dtype=np.int64)
    return np.asarray([batch_attention_features(q, kv, shape)], dtype=np.float64)


def sparse_coefficients(coef) -> list[tuple[int, float]]:
    """(column, coefficient) pairs of the non-zero coefficients, for linear_combination."""
    return [(j, float(c)) for j, c in enumerate(coef) if c != 0.0]


def linear_combination(terms: list[tuple[int, float]], features: list):
    """sum of coefficient * features[column] over `terms`, always in the same order (floats or arrays
    alike, so the single-batch and decode-run paths agree bit for bit)."""
    total = 0.0
    for j, c in terms:
        total = total + c * features[j]
    return total


def composition_arrays(composition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split an (n, 2) [q, kv] composition into (q_tokens, kv_tokens) int64 arrays."""
    pairs = np.asarray(composition, dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def attention_feature_table(compositions, shape: AttentionShape) -> np.ndarray:
    """Feature matrix of many compositions (one row each)."""
    rows = [batch_attention_features(*composition_arrays(c), shape) for c in compositions]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(ATTENTION_FEATURES))


# ---------------------------------------------------------------- token-wise ops

TOKEN_FEATURES = ["num_tokens", "flops", "bytes", "roofline_ms", "padded_flops", "waves"]


@dataclass(frozen=True)
class AffineWork:
    """flops(n) and bytes(n) of one op as exact affine functions of the token count n."""

    flops_per_token: float
    flops_fixed: float
    bytes_per_token: float
    bytes_fixed: float

    def flops(self, n: np.ndarray) -> np.ndarray:
        return self.flops_fixed + self.flops_per_token * n

    def bytes(self, n: np.ndarray) -> np.ndarray:
        return self.bytes_fixed + self.bytes_per_token * n


def affine_work(num_tokens: np.ndarray, flops: np.ndarray, bytes_: np.ndarray, source: str) -> AffineWork:
    """Recover the affine FLOP and byte counts the profiler wrote (they are exact functions of n).

    Raises ValueError naming `source` if the columns are not affine in n (then they are not work counts).
    """
    n = np.asarray(num_tokens, dtype=np.float64)
    design = np.column_stack([np.ones_like(n), n])
    coefs = []
    for name, values in (("flops", flops), ("bytes", bytes_)):
        y = np.asarray(values, dtype=np.float64)
        if len(np.unique(n)) < 2:
            coefs.append((0.0, float(y.mean() / max(n.mean(), 1.0))))
            continue
        (fixed, per_token), *_ = np.linalg.lstsq(design, y, rcond=None)
        error = np.abs(design @ [fixed, per_token] - y) / np.maximum(np.abs(y), 1.0)
        if error.max() > 1e-3:
            raise ValueError(f"{source}: column '{name}' is not an affine function of num_tokens")
        coefs.append((float(fixed), float(per_token)))
    return AffineWork(flops_per_token=coefs[0][1], flops_fixed=coefs[0][0],
                      bytes_per_token=coefs[1][1], bytes_fixed=coefs[1][0])


@dataclass(frozen=True)
class Peaks:
    """Datasheet peaks used to express work as roofline time."""

    flops_per_s: float
    bytes_per_s: float
    num_sms: int = 132


def token_features(num_tokens: np.ndarray, work: AffineWork, peaks: Peaks, out_features: int = 0,
                   tile_tokens: int = 128) -> pd.DataFrame:
    """Feature frame of a token-wise op at each token count.

    padded_flops: FLOPs with n rounded up to whole `tile_tokens` tiles (GEMMs compute whole tiles);
    waves: for a GEMM with `out_features` output columns, its 128x128 output tiles over the SMs,
    rounded up (a partly filled last wave costs a full one); 0 for other ops.
    """
    n = np.asarray(num_tokens, dtype=np.float64)
    flops = work.flops(n)
    bytes_ = work.bytes(n)
    padded = np.ceil(n / tile_tokens) * tile_tokens
    if out_features > 0:
        tiles = padded / tile_tokens * np.ceil(out_features / tile_tokens)
        waves = np.ceil(tiles / peaks.num_sms)
    else:
        waves = np.zeros_like(n)
    roofline_ms = np.maximum(flops / peaks.flops_per_s, bytes_ / peaks.bytes_per_s) * 1e3
    return pd.DataFrame({"num_tokens": n, "flops": flops, "bytes": bytes_, "roofline_ms": roofline_ms,
                         "padded_flops": work.flops(padded), "waves": waves})
