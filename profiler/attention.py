"""Attention as a serving engine launches it: one varlen launch over a batch of sequences.

Sequence i brings q_i new tokens and has p_i tokens already cached. Its new tokens attend to all p_i
cached tokens and causally among themselves: query j (0-based) sees keys 0 .. p_i + j. That is a causal
mask aligned to the bottom-right corner of the q_i x (p_i + q_i) score matrix. Prefill chunks, decodes
(q_i = 1) and mixed batches are all one launch.

Layout: queries packed as [total_q, q_heads, head_dim]; keys/values packed per sequence (its prefix then
its new tokens) as [total_k, kv_heads, head_dim], with cumulative offsets cu_q / cu_k (int32). GQA:
kv_heads may divide q_heads.

How an engine launches one layer's attention (simulator/engine.py, `attention_launch`):
  fused_varlen  one varlen launch over every sequence (`attention`)
  split         the prefill chunks in one launch and the decodes in another (`split_attention`): the
                layout puts chunk sequences first, so each launch reads a contiguous run of q and k rows

Backends, in order of preference (the first importable one that passes `check_backend` on the device):
  flash_attn   flash_attn.flash_attn_varlen_func (the flash-attn package)
  torch_flash  torch.ops.aten._flash_attention_forward: the FA2 varlen kernel inside PyTorch
  sdpa_masked  torch SDPA per sequence with an explicit boolean mask (any device; the CPU path)
"""
from __future__ import annotations

import importlib.util
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from profiler.grid import AttentionPoint
from profiler.ops import OpBenchmark


@dataclass(frozen=True)
class VarlenBatch:
    """Offsets of a packed batch. q_lens[i] new tokens, prefix_lens[i] cached tokens per sequence."""

    q_lens: tuple
    prefix_lens: tuple
    cu_q: torch.Tensor  # [batch + 1] int32, on the device
    cu_k: torch.Tensor  # [batch + 1] int32
    max_q: int
    max_k: int

    @property
    def total_q(self) -> int:
        return sum(self.q_lens)

    @property
    def total_k(self) -> int:
        return sum(self.q_lens) + sum(self.prefix_lens)


def make_batch(composition, device) -> VarlenBatch:
    """VarlenBatch for ((q_tokens, prefix_tokens), ...)."""
    q_lens = tuple(int(q) for q, _ in composition)
    prefix_lens = tuple(int(p) for _, p in composition)
    k_lens = [q + p for q, p in zip(q_lens, prefix_lens)]
    cu_q = torch.tensor([0, *_cumsum(q_lens)], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, *_cumsum(k_lens)], dtype=torch.int32, device=device)
    return VarlenBatch(q_lens, prefix_lens, cu_q, cu_k, max(q_lens), max(k_lens))


@dataclass(frozen=True)
class SplitBatch:
    """A batch laid out chunks first (q > 1), then decodes, launched as two varlen calls.

    prefill / decode: the launches' offsets relative to their own first q and k row (None when the batch
    has no sequence of that kind); prefill_q / prefill_k: the q and k rows the chunk sequences take.
    """

    prefill: VarlenBatch | None
    decode: VarlenBatch | None
    prefill_q: int
    prefill_k: int


def chunks_first(composition) -> list[int]:
    """Indices of `composition` ((q, prefix), ...) with prefill chunks (q > 1) first, then decodes, each in
    their original order: the layout a split launch needs."""
    return sorted(range(len(composition)), key=lambda i: int(composition[i][0]) == 1)


def make_split_batch(composition, device) -> SplitBatch:
    """SplitBatch of a composition already ordered chunks first (see chunks_first)."""
    kinds = [int(q) > 1 for q, _ in composition]
    if any(later and not earlier for earlier, later in itertools.pairwise(kinds)):
        raise ValueError("a split launch needs its prefill chunks before its decodes (see chunks_first)")
    num_chunks = sum(kinds)
    chunks, decodes = composition[:num_chunks], composition[num_chunks:]
    return SplitBatch(make_batch(chunks, device) if chunks else None,
                      make_batch(decodes, device) if decodes else None,
                      sum(int(q) for q, _ in chunks), sum(int(q) + int(p) for q, p in chunks))


def split_attention(backend: str, q, k, v, split: SplitBatch, scale: float) -> torch.Tensor:
    """`attention` of a chunks-first batch as two launches, chunks then decodes (as vLLM V0 with
    FlashAttention-2 and FlashInfer run a mixed batch). One launch when the batch has one kind only."""
    pq, pk = split.prefill_q, split.prefill_k
    if split.decode is None:
        return attention(backend, q, k, v, split.prefill, scale)
    if split.prefill is None:
        return attention(backend, q, k, v, split.decode, scale)
    return torch.cat([attention(backend, q[:pq], k[:pk], v[:pk], split.prefill, scale),
                      attention(backend, q[pq:], k[pk:], v[pk:], split.decode, scale)])


def _cumsum(values):
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out


def bottom_right_causal_mask(q_len: int, prefix_len: int, device) -> torch.Tensor:
    """[q_len, prefix_len + q_len] bool, True where query j may attend key t (t <= prefix_len + j)."""
    rows = torch.arange(q_len, device=device).unsqueeze(1)
    cols = torch.arange(prefix_len + q_len, device=device).unsqueeze(0)
    return cols <= rows + prefix_len


def attention(backend: str, q, k, v, batch: VarlenBatch, scale: float) -> torch.Tensor:
    """Attention of packed q [total_q, hq, d] over packed k, v [total_k, hk, d] -> [total_q, hq, d]."""
    if backend == "torch_flash":
        return torch.ops.aten._flash_attention_forward(
            q, k, v, batch.cu_q, batch.cu_k, batch.max_q, batch.max_k, 0.0, True, False, scale=scale)[0]
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func
        return flash_attn_varlen_func(q, k, v, batch.cu_q, batch.cu_k, batch.max_q, batch.max_k,
                                      softmax_scale=scale, causal=True)
    if backend == "sdpa_masked":
        return _sdpa_masked(q, k, v, batch, scale)
    raise ValueError(f"unknown attention backend {backend!r}; known: flash_attn, torch_flash, sdpa_masked")


def _sdpa_masked(q, k, v, batch: VarlenBatch, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    q_start = k_start = 0
    groups = q.shape[1] // k.shape[1]
    for q_len, prefix_len in zip(batch.q_lens, batch.prefix_lens):
        k_len = q_len + prefix_len
        qi = q[q_start:q_start + q_len].transpose(0, 1).unsqueeze(0)
        ki = k[k_start:k_start + k_len].transpose(0, 1).repeat_interleave(groups, dim=0).unsqueeze(0)
        vi = v[k_start:k_start + k_len].transpose(0, 1).repeat_interleave(groups, dim=0).unsqueeze(0)
        mask = bottom_right_causal_mask(q_len, prefix_len, q.device)
        oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale)
        out[q_start:q_start + q_len] = oi.squeeze(0).transpose(0, 1)
        q_start, k_start = q_start + q_len, k_start + k_len
    return out


def reference_attention(q, k, v, batch: VarlenBatch, scale: float) -> torch.Tensor:
    """Plain float32 softmax(q k^T * scale + mask) v, sequence by sequence: the correctness reference."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    q_start = k_start = 0
    groups = q.shape[1] // k.shape[1]
    for q_len, prefix_len in zip(batch.q_lens, batch.prefix_lens):
        k_len = q_len + prefix_len
        qi = q[q_start:q_start + q_len].float().transpose(0, 1)                      # [hq, q, d]
        ki = k[k_start:k_start + k_len].float().transpose(0, 1).repeat_interleave(groups, 0)
        vi = v[k_start:k_start + k_len].float().transpose(0, 1).repeat_interleave(groups, 0)
        scores = qi @ ki.transpose(1, 2) * scale
        mask = bottom_right_causal_mask(q_len, prefix_len, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        out[q_start:q_start + q_len] = (scores.softmax(-1) @ vi).transpose(0, 1)
        q_start, k_start = q_start + q_len, k_start + k_len
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float32; inf if out has NaN/inf."""
    out32 = out.float()
    if not torch.isfinite(out32).all():
        return float("inf")
    return float((out32 - ref).norm() / ref.norm())


CHECK_COMPOSITIONS = [
    ((7, 0),),                          # plain causal prefill
    ((5, 9),),                          # chunk over a prefix: bottom-right alignment matters here
    ((1, 20), (1, 3), (1, 64)),         # decodes with different contexts
    ((33, 17), (1, 50), (8, 0), (1, 1)),  # mixed launch
    ((64, 200), (130, 0)),              # q longer than a kernel tile (64/128) with and without prefix
]


# Served-model shapes (32 q heads over 8 KV heads, head_dim 128, long prefixes); checked on GPUs only.
CHECK_COMPOSITIONS_LARGE = [
    ((512, 3000),),
    ((1, 4000), (1, 17), (300, 100), (2048, 0)),
]


def check_backend(backend: str, device, dtype, q_heads=4, kv_heads=2, head_dim=64, seed=0) -> dict:
    """Compare `backend` with the float32 reference on compositions that exercise the prefix, GQA and
    mixed batches, on fresh random data. Returns {'max_rel_error', 'per_composition', 'passed'}."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    tolerance = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    errors = []
    cases = [(c, q_heads, kv_heads, head_dim) for c in CHECK_COMPOSITIONS]
    if torch.device(device).type == "cuda":
        cases += [(c, 32, 8, 128) for c in CHECK_COMPOSITIONS_LARGE]
    for comp, heads_q, heads_kv, dim in cases:
        batch = make_batch(comp, device)
        q = torch.randn((batch.total_q, heads_q, dim), generator=gen, device=device).to(dtype)
        k = torch.randn((batch.total_k, heads_kv, dim), generator=gen, device=device).to(dtype)
        v = torch.randn((batch.total_k, heads_kv, dim), generator=gen, device=device).to(dtype)
        scale = dim ** -0.5
        out = attention(backend, q, k, v, batch, scale)
        errors.append(relative_error(out, reference_attention(q, k, v, batch, scale)))
    worst = max(errors)
    return {"backend": backend, "max_rel_error": worst, "per_composition": errors,
            "tolerance": tolerance, "passed": bool(worst < tolerance)}


def candidate_backends(device) -> list[str]:
    """Backends to try on `device`, best first."""
    if torch.device(device).type != "cuda":
        return ["sdpa_masked"]
    names = []
    if importlib.util.find_spec("flash_attn") is not None:
        names.append("flash_attn")
    return names + ["torch_flash", "sdpa_masked"]


def choose_backend(device, dtype, requested: str | None = None) -> tuple[str, list[dict]]:
    """The first candidate (or `requested`) that passes check_backend; returns (name, check reports)."""
    reports = []
    for name in [requested] if requested else candidate_backends(device):
        try:
            report = check_backend(name, device, dtype)
        except (RuntimeError, ImportError, NotImplementedError) as e:
            report = {"backend": name, "passed": False, "error": f"{type(e).__name__}: {e}"[:500]}
        reports.append(report)
        if report["passed"]:
            return name, reports
    raise RuntimeError(f"no attention backend passed the correctness check on {device}: {reports}")


def attention_work(point: AttentionPoint, element_bytes: int) -> tuple[float, float]:
    """(flops, fewest bytes) of one launch: QK^T and PV over the (query, key) pairs the mask allows;
    q read, out written, each sequence's K and V read once."""
    pairs = sum(q * p + q * (q + 1) / 2 for q, p in point.composition)
    flops = 4.0 * point.num_q_heads * point.head_dim * pairs
    total_q = sum(q for q, _ in point.composition)
    total_k = sum(q + p for q, p in point.composition)
    bytes_ = element_bytes * point.head_dim * (2 * total_q * point.num_q_heads + 2 * total_k * point.num_kv_heads)
    return flops, bytes_


def build_attention(point: AttentionPoint, backend: str, device, dtype, sets_for, seed=0) -> OpBenchmark:
    """Random packed q/k/v for `point` (several copies if they would sit in L2) ready to time."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    batch = make_batch(point.composition, device)
    es = torch.tensor([], dtype=dtype).element_size()
    flops, bytes_ = attention_work(point, es)
    sets = sets_for(int(bytes_))
    hq, hk, d = point.num_q_heads, point.num_kv_heads, point.head_dim

    def rand(rows, heads):
        return torch.randn((rows, heads, d), generator=gen, device=device, dtype=dtype)

    qs = [rand(batch.total_q, hq) for _ in range(sets)]
    ks = [rand(batch.total_k, hk) for _ in range(sets)]
    vs = [rand(batch.total_k, hk) for _ in range(sets)]
    scale = 1.0 / math.sqrt(d)
    return OpBenchmark(lambda i: attention(backend, qs[i], ks[i], vs[i], batch, scale), sets, flops, bytes_,
                       int(bytes_))
