"""The token-wise ops of a Llama layer, as a serving engine runs them, and how to benchmark each one.

The functions at the top are the implementations; profiler/model.py composes the same functions into a
whole model, so the iteration timings validate exactly what ops.csv measured. `build_op` makes the
inputs for one ops.csv point (random data, several copies to rotate through) and counts its work.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RMS_EPS = 1e-5


# ---- implementations (shared with profiler/model.py) -------------------------------------------------

def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [n, in] @ weight[out, in]^T -> [n, out] (cuBLAS through F.linear, as nn.Linear and vLLM do)."""
    return F.linear(x, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """RMSNorm over the last dim (torch's fused kernel where it has one)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def residual_add(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """In-place x += residual (the layer's skip connection); returns x."""
    return x.add_(residual)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: silu(gate) * up, with gate and up fused along the last dim [n, 2 i] -> [n, i]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_cache(head_dim: int, max_positions: int, theta: float, device, dtype) -> torch.Tensor:
    """[max_positions, head_dim] table of cos (first half) and sin (second half) per position."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32, device=device), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor):
    """Rotary embedding (GPT-NeoX layout, as Llama in HF/vLLM) of q [n, hq, d] and k [n, hk, d] at
    `positions` [n]; returns new (q, k)."""
    cos, sin = cache.index_select(0, positions).unsqueeze(1).chunk(2, dim=-1)

    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    return rotate(q), rotate(k)


def embed(ids: torch.Tensor, weight: torch.Tensor, vocab_start: int, sharded: bool) -> torch.Tensor:
    """Look up `ids` [n] in this shard's rows [vocab_shard, hidden]. A TP shard zeroes the rows of ids
    other shards own (their all-reduce then sums the shards), as vLLM's VocabParallelEmbedding does."""
    if not sharded:
        return F.embedding(ids, weight)
    local = ids - vocab_start
    mask = (local >= 0) & (local < weight.shape[0])
    out = F.embedding(local.masked_fill(~mask, 0), weight)
    return out.mul_(mask.unsqueeze(-1).to(out.dtype))


def sample(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Random sampling with per-row temperature over [n, vocab] logits -> token ids [n].

    Softmax in float32, then argmax(probs / Exp(1) noise), which draws from `probs` without the host sync
    of torch.multinomial (the method vLLM's sampler uses).
    """
    probs = torch.softmax(logits.float().div_(temperature.unsqueeze(-1)), dim=-1)
    noise = torch.empty_like(probs).exponential_()
    return probs.div_(noise).argmax(dim=-1)


# ---- benchmarks of single ops -------------------------------------------------------------------------

@dataclass
class OpBenchmark:
    """A ready-to-time op: `call(i)` runs it on input set i; work counts are per call."""

    call: Callable[[int], object]
    num_sets: int
    flops: float
    bytes: float
    footprint_bytes: int


def _rand(shape, device, dtype, gen, scale=1.0):
    """Normal random data straight in `dtype` (no float32 temporary: some inputs are gigabytes)."""
    x = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    return x.mul_(scale) if scale != 1.0 else x


def build_op(shape: tuple, num_tokens: int, device, dtype, sets_for: Callable[[int], int],
             seed: int = 0) -> OpBenchmark:
    """Inputs and work counts for op `shape` (grid.op_shape) over `num_tokens` rows.

    sets_for(footprint_bytes) says how many input copies to rotate (timing.input_sets_needed).
    flops / bytes are the work the op must do and the fewest bytes it must move (inputs read once,
    outputs written once), for achieved TFLOP/s and TB/s.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    n, es = num_tokens, torch.tensor([], dtype=dtype).element_size()
    kind = shape[0]

    if kind == "linear":
        k, m = shape[1], shape[2]
        footprint = (n * k + k * m + n * m) * es
        sets = sets_for(footprint)
        xs = [_rand((n, k), device, dtype, gen) for _ in range(sets)]
        ws = [_rand((m, k), device, dtype, gen, scale=k ** -0.5) for _ in range(sets)]
        return OpBenchmark(lambda i: linear(xs[i], ws[i]), sets, 2.0 * n * k * m, footprint, footprint)

    if kind == "rope":
        hq, hk, d = shape[1:]
        footprint = 2 * n * (hq + hk) * d * es + n * d * es
        sets = sets_for(footprint)
        cache = rope_cache(d, 65536, 10000.0, device, dtype)
        qs = [_rand((n, hq, d), device, dtype, gen) for _ in range(sets)]
        ks = [_rand((n, hk, d), device, dtype, gen) for _ in range(sets)]
        pos = [torch.randint(0, 65536, (n,), device=device, generator=gen) for _ in range(sets)]
        return OpBenchmark(lambda i: apply_rope(qs[i], ks[i], pos[i], cache), sets,
                           3.0 * n * (hq + hk) * d, footprint, footprint)

    if kind == "act":
        inter = shape[1]
        footprint = 3 * n * inter * es
        sets = sets_for(footprint)
        xs = [_rand((n, 2 * inter), device, dtype, gen) for _ in range(sets)]
        return OpBenchmark(lambda i: silu_and_mul(xs[i]), sets, 5.0 * n * inter, footprint, footprint)

    if kind == "rmsnorm":
        h = shape[1]
        footprint = (2 * n * h + h) * es
        sets = sets_for(footprint)
        xs = [_rand((n, h), device, dtype, gen) for _ in range(sets)]
        ws = [_rand((h,), device, dtype, gen) for _ in range(sets)]
        return OpBenchmark(lambda i: rms_norm(xs[i], ws[i]), sets, 4.0 * n * h, footprint, footprint)

    if kind == "residual_add":
        h = shape[1]
        footprint = 3 * n * h * es
        sets = sets_for(footprint)
        xs = [_rand((n, h), device, dtype, gen) for _ in range(sets)]
        rs = [_rand((n, h), device, dtype, gen, scale=1e-3) for _ in range(sets)]
        # In place on purpose (as in the model); the tiny residual keeps values bounded over many calls.
        return OpBenchmark(lambda i: residual_add(xs[i], rs[i]), sets, 1.0 * n * h, footprint, footprint)

    if kind == "embedding":
        vocab_shard, h, sharded = shape[1:]
        # Rows actually read: at most n distinct rows; ids are int64.
        footprint = 2 * n * h * es + n * 8
        sets = sets_for(footprint)
        vocab_total = vocab_shard * 2 if sharded else vocab_shard  # ids spread over this and other shards
        table = _rand((vocab_shard, h), device, dtype, gen)
        ids = [torch.randint(0, vocab_total, (n,), device=device, generator=gen) for _ in range(sets)]
        return OpBenchmark(lambda i: embed(ids[i], table, 0, sharded), sets, 0.0, footprint, footprint)

    if kind == "sampling":
        vocab = shape[1]
        footprint = n * vocab * es + n * 8
        sets = sets_for(footprint)
        logits = [_rand((n, vocab), device, dtype, gen, scale=3.0) for _ in range(sets)]
        temps = [torch.rand((n,), device=device, generator=gen) + 0.5 for _ in range(sets)]
        return OpBenchmark(lambda i: sample(logits[i], temps[i]), sets, 5.0 * n * vocab, footprint, footprint)

    raise ValueError(f"unknown op shape {shape!r}")
