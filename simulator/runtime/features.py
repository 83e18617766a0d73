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

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas loads only where a table is read or built (it takes ~0.3 s to import)
    import pandas as pd

# Columns of the attention feature matrix, in order (see batch_attention_features).
# A launch of decodes only (every q = 1) runs FlashAttention's decode path (grouped query heads packed
# into one thread block, KV split across blocks): much cheaper per KV token than a launch with a prefill
# chunk in it, where every sequence, decodes included, is walked by 128-row query blocks per query head.
# So decode terms are kept apart by launch kind.
ATTENTION_FEATURES = [
    "launch",                    # 1: one kernel launch
    "prefill_pairs",             # sum over chunks (q > 1) of q*kv + q(q+1)/2: score entries (FLOPs / (4 hd heads));
                                 # in a launch with a chunk, decodes count as one-token chunks here and below
    "decode_kv_tokens",          # decode-only launch: sum of kv + 1 (KV each decode streams from HBM)
    "prefill_kv_reads",          # sum over chunks of ceil(q/block_m) * (kv + q/2): KV re-read by query blocks
    "prefill_q_tokens",          # sum of chunk lengths (Q read, O written, softmax rows)
    "num_decodes",
    "num_prefills",
    "max_prefill_context",       # longest chunk's kv + q: its last query block is a critical path
    "sm_load_tokens",            # max(longest sequence, all query-block work / SMs): time of a full GPU
    "mixed_decode_kv_tokens",    # launch with a chunk: sum over its decodes of kv + 1 (walked like a chunk)
    "unsplit_decode_critical",   # decode-only launch without KV splits: longest kv + 1 (one block walks it)
    "max_mixed_decode_context",  # launch with a chunk: its longest decode's kv + 1
    "split_decode_critical",     # decode-only launch with KV splits: KV tokens of one split of the longest
    "split_decode_blocks",       # decode-only launch with KV splits: thread blocks (their partial results
                                 # are combined by a second kernel)
    "decode_list_bound",         # decode-only launch without KV splits whose thread blocks (sequences x
                                 # heads) outnumber the SMs' slots: longest + blocks' KV tokens / slots
    "chunk_list_bound",          # launch with a chunk whose query blocks (128 rows x query heads) outnumber
                                 # the SMs: longest + query blocks' KV reads / SMs
]
# The list-scheduling bounds: the GPU starts thread blocks in launch order as slots free up, so when a
# launch has more blocks than slots its time is at most (and with contexts of different lengths close
# to) the longest block plus the total work over the slots (Graham's bound for list scheduling), not
# the larger of the two: a long sequence's blocks may start only after a first wave has run.
PREFILL_TERMS = ("prefill_pairs", "prefill_kv_reads", "prefill_q_tokens", "num_prefills", "max_prefill_context",
                 "chunk_list_bound")
DECODE_TERMS = ("decode_kv_tokens", "num_decodes", "mixed_decode_kv_tokens", "unsplit_decode_critical",
                "max_mixed_decode_context", "split_decode_critical", "split_decode_blocks", "decode_list_bound")


@dataclass(frozen=True)
class AttentionShape:
    """What the attention kernel of one layer on one shard looks like."""

    q_heads: int  # query heads on this shard
    kv_heads: int = 0  # KV heads on this shard (0: same as q_heads)
    block_m: int = 128  # query rows per thread block (FlashAttention-2 forward, head_dim 128)
    num_sms: int = 132  # streaming multiprocessors (H100 SXM / H200: 132)
    split_block_n: int = 128  # KV tokens per block of FlashAttention-2's split-KV kernel (head_dim 128)

    @property
    def decode_blocks_per_sequence(self) -> int:
        """Thread blocks per sequence of an unsplit decode-only launch: one per KV head when FA2 packs
        grouped query heads, else one per query head."""
        return self.kv_heads if 0 < self.kv_heads < self.q_heads else self.q_heads

    @property
    def decode_slots(self) -> int:
        """Decode thread blocks resident at once (FA2's split heuristic counts 2 per SM)."""
        return 2 * self.num_sms

    def decode_split(self, num_seqs: int, max_context: int) -> tuple[int, int]:
        """(KV splits, KV tokens per split) FlashAttention-2 picks for a decode-only launch."""
        # With grouped queries and one query per sequence, FA2's varlen forward packs a KV head's query
        # heads into one thread block (seqlenq_ngroups_swapped) and only then may split the KV; the grid
        # spans sequences x KV heads. Without grouped queries it never splits (measured: llama-2-7b's
        # single decodes cost their whole context on one block).
        if not 0 < self.kv_heads < self.q_heads:
            return 1, max_context
        kv_blocks = -(-max_context // self.split_block_n)
        splits = fa2_num_splits(num_seqs * self.kv_heads, 2 * self.num_sms, kv_blocks)
        return splits, -(-kv_blocks // splits) * self.split_block_n


@functools.lru_cache(maxsize=65536)
def fa2_num_splits(batch_heads_mblocks: int, num_sm_slots: int, num_n_blocks: int, max_splits: int = 128) -> int:
    """FlashAttention-2's num_splits_heuristic (flash_api.cpp; PyTorch's copy is the same): how many
    parts a launch splits each sequence's KV into so that the thread blocks fill the GPU's waves."""
    if batch_heads_mblocks >= 0.8 * num_sm_slots:
        return 1
    max_splits = min(max_splits, num_sm_slots, num_n_blocks)

    def eligible(s: int) -> bool:
        return s == 1 or -(-num_n_blocks // s) != -(-num_n_blocks // (s - 1))

    efficiency = []
    for s in range(1, max_splits + 1):
        waves = batch_heads_mblocks * s / num_sm_slots
        efficiency.append(waves / math.ceil(waves) if eligible(s) else 0.0)
    best = max(efficiency, default=0.0)
    for s in range(1, max_splits + 1):
        if eligible(s) and efficiency[s - 1] >= 0.85 * best:
            return s
    return 1


# Both functions below compute every feature from exact integer sums, in the same order, so the
# single-batch path and the vectorised decode-run path give bit-identical features.


# Up to this many sequences a launch's features are summed over Python lists (the simulator passes
# lists, and numpy's per-call overhead exceeds the arithmetic); beyond, with numpy reductions.
FEW_SEQUENCES = 64


def batch_attention_features(q_tokens, kv_tokens, shape: AttentionShape) -> list:
    """ATTENTION_FEATURES of one launch (q_tokens, kv_tokens: (n,) int arrays or lists), as Python numbers.

    On the simulator's hot path for batches with a chunk: a handful of numpy reductions (or Python
    sums over a few sequences), then scalar arithmetic over the (few) prefill chunks only. The batch's token count is features[4] + features[5] (chunk tokens plus
    one per decode).
    """
    n = len(q_tokens)
    few = n <= FEW_SEQUENCES  # few sequences: Python lists beat numpy's per-call overhead
    if isinstance(q_tokens, list) and not few:
        q_tokens, kv_tokens = np.asarray(q_tokens), np.asarray(kv_tokens)
    if few:
        q_list, kv_list = (q_tokens, kv_tokens) if isinstance(q_tokens, list) else (q_tokens.tolist(), kv_tokens.tolist())
        num_tokens, kv_sum, kv_max = sum(q_list), sum(kv_list), max(kv_list)
    else:
        num_tokens = int(np.add.reduce(q_tokens))
        kv_sum = int(np.add.reduce(kv_tokens))
        kv_max = int(np.maximum.reduce(kv_tokens))
    if num_tokens == n:  # decode-only: every q is 1
        work2 = 2 * kv_sum + 2 * n
        longest = kv_max + 1
        splits, split_tokens = shape.decode_split(n, longest)
        return [1.0, 0, kv_sum + n, 0, 0, n, 0, 0, max(longest, shape.q_heads * work2 / (2 * shape.num_sms)),
                0, longest if splits == 1 else 0, 0, min(longest, split_tokens) if splits > 1 else 0,
                n * splits if splits > 1 else 0, decode_list_bound(n, kv_sum + n, longest, splits, shape), 0]
    pairs = reads2 = prefill_q = prefill_kv = prefill_work2 = max_prefill = max_prefill_kv = num_prefills = 0
    query_blocks = 0
    if few:
        chunks = [(q, kv) for q, kv in zip(q_list, kv_list) if q > 1]
    else:
        prefill = (q_tokens > 1).nonzero()[0]
        chunks = zip(q_tokens[prefill].tolist(), kv_tokens[prefill].tolist())
    for q, kv in chunks:
        max_prefill_kv = max(max_prefill_kv, kv)
        blocks = -(-q // shape.block_m)
        query_blocks += blocks
        pairs += q * kv + q * (q + 1) // 2
        reads2 += blocks * (2 * kv + q)
        prefill_q += q
        prefill_kv += kv
        prefill_work2 += 2 * blocks * kv + q * (blocks + 1)
        max_prefill = max(max_prefill, q + kv)
        num_prefills += 1
    num_decodes = n - num_prefills
    decode_kv = kv_sum - prefill_kv + num_decodes
    if not num_decodes:
        max_decode = 0
    elif kv_max > max_prefill_kv:  # the longest cached context is a decode's: no second pass needed
        max_decode = kv_max + 1
    elif few:
        max_decode = max(kv for q, kv in zip(q_list, kv_list) if q == 1) + 1
    else:
        max_decode = int(np.maximum.reduce(kv_tokens[q_tokens == 1])) + 1
    work2 = 2 * decode_kv + prefill_work2
    # In a launch with a chunk, a decode is a one-token chunk to the kernel: one query block walking
    # its kv + 1 keys. It adds to the chunk terms; the mixed_* terms let the fit adjust on top.
    kv_reads = (reads2 + 2 * decode_kv - num_decodes) / 2
    longest = max(max_prefill, max_decode)
    many_blocks = (query_blocks + num_decodes) * shape.q_heads > shape.num_sms
    return [1.0, pairs + decode_kv, 0, kv_reads, prefill_q, num_decodes, num_prefills, longest,
            max(max_prefill, max_decode, shape.q_heads * work2 / (2 * shape.num_sms)),
            decode_kv, 0, max_decode, 0, 0, 0, longest + shape.q_heads * kv_reads / shape.num_sms if many_blocks else 0]


def decode_list_bound(num_seqs: int, streamed_tokens, longest, splits, shape: AttentionShape):
    """decode_list_bound of decode-only launches (Python numbers or arrays alike, same operations in the
    same order): longest + streamed x blocks per sequence / slots when the launch is unsplit and its
    blocks outnumber the slots, else 0."""
    blocks_per_sequence = shape.decode_blocks_per_sequence
    if num_seqs * blocks_per_sequence <= shape.decode_slots:
        return 0 if isinstance(longest, int) else np.zeros_like(longest)
    bound = longest + streamed_tokens * blocks_per_sequence / shape.decode_slots
    if isinstance(splits, int):
        return bound if splits == 1 else 0
    return np.where(splits == 1, bound, 0)


def decode_run_attention_features(kv_tokens: np.ndarray, num_steps: int, shape: AttentionShape) -> list:
    """ATTENTION_FEATURES of `num_steps` decode-only launches of the same sequences, step k at
    contexts kv_tokens + k: a list of per-feature arrays of length num_steps (constants as numbers)."""
    n = len(kv_tokens)
    steps = np.arange(num_steps, dtype=np.int64)
    kv_sum = int(np.add.reduce(kv_tokens)) + n * steps  # exact: sum(kv + k) = sum(kv) + n k
    longest = int(np.maximum.reduce(kv_tokens)) + 1 + steps
    work2 = 2 * kv_sum + 2 * n
    # The split choice changes only when the longest context crosses a KV block: evaluate it per block.
    first_block = (int(longest[0]) - 1) // shape.split_block_n if num_steps else 0
    block_of_step = (longest - 1) // shape.split_block_n - first_block
    per_block = [shape.decode_split(n, (first_block + b + 1) * shape.split_block_n)
                 for b in range(int(block_of_step[-1]) + 1 if num_steps else 0)]
    splits = np.array([p[0] for p in per_block], dtype=np.int64)[block_of_step]
    split_tokens = np.array([p[1] for p in per_block], dtype=np.int64)[block_of_step]
    split = splits > 1
    return [1.0, 0, kv_sum + n, 0, 0, n, 0, 0, np.maximum(longest, shape.q_heads * work2 / (2 * shape.num_sms)),
            0, np.where(split, 0, longest), 0, np.where(split, np.minimum(longest, split_tokens), 0),
            np.where(split, n * splits, 0), decode_list_bound(n, kv_sum + n, longest, splits, shape), 0]


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

TOKEN_FEATURES = ["num_tokens", "flops", "bytes", "roofline_ms", "padded_flops", "waves", "serial_index_rows"]


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
        if not np.any(y):
            coefs.append((0.0, 0.0))
            continue
        # Relative least squares: the CSV keeps ~6 significant digits, so small counts must weigh as
        # much as large ones.
        weight = 1.0 / np.maximum(np.abs(y), 1e-300)
        (fixed, per_token), *_ = np.linalg.lstsq(design * weight[:, None], y * weight, rcond=None)
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
                   tile_tokens: int = 128, serial_index_limit: int = 0) -> pd.DataFrame:
    """Feature frame of a token-wise op at each token count.

    padded_flops: FLOPs with n rounded up to whole `tile_tokens` tiles (GEMMs compute whole tiles);
    waves: for a GEMM with `out_features` output columns, its 128x128 output tiles over the SMs,
    rounded up (a partly filled last wave costs a full one); 0 for other ops.
    serial_index_rows: n where n <= serial_index_limit, else 0. PyTorch's index_select (the embedding
    lookup) runs a kernel in which every thread walks all indices when there are at most 16 of them
    (indexSelectSmallIndex), and one thread per element beyond: measured on H100, 0.36 us per index up
    to 16 (7.7 us), then 1.5 us at 17.
    """
    import pandas as pd

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
    serial = np.where(n <= serial_index_limit, n, 0.0)
    return pd.DataFrame({"num_tokens": n, "flops": flops, "bytes": bytes_, "roofline_ms": roofline_ms,
                         "padded_flops": work.flops(padded), "waves": waves, "serial_index_rows": serial})
