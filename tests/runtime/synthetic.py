"""Small profile tables for tests, generated from a known cost formula (tests only: never shipped).

The formula is a roofline with launch latency plus a little deterministic noise, so a test knows the
true time of any op or batch and can check the fitted model against it, inside and outside the grid.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.config import HardwareConfig, ModelConfig

TINY_MODEL = ModelConfig(
    name="tiny-llama", num_layers=4, hidden_size=512, num_q_heads=8, num_kv_heads=4, head_dim=64,
    intermediate_size=1024, vocab_size=2000, max_model_len=4096,
)
TEST_GPU = HardwareConfig(
    name="testgpu", gpu_name="Test GPU", memory_gib=80.0, memory_bandwidth_tbps=3.0, bf16_dense_tflops=800.0,
    nvlink_bandwidth_gbps=900.0, profile="testgpu", comm_profile="testgpu",
)
NO_PROFILE_GPU = HardwareConfig(
    name="nogpu", gpu_name="Unprofiled GPU", memory_gib=80.0, memory_bandwidth_tbps=2.0, bf16_dense_tflops=300.0,
    nvlink_bandwidth_gbps=600.0, profile="nogpu", comm_profile="nogpu",
)

LAUNCH_MS = 0.004
FLOPS_PER_MS = 600e12 / 1e3  # achieved: below the datasheet, as real kernels are
BYTES_PER_MS = 2.4e12 / 1e3
TOKENS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]


def _noise(key: str, scale: float = 0.01) -> float:
    """Deterministic multiplicative noise in [1 - scale, 1 + scale] from a string key."""
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    return 1.0 + scale * (2 * rng.random() - 1)


def op_work(model: ModelConfig, tp: int, op: str, n: float) -> tuple[float, float]:
    """(flops, bytes) of `op` on n tokens of one shard, bf16."""
    h, hd, b = model.hidden_size, model.head_dim, 2
    qh, kvh = model.num_q_heads // tp, model.kv_heads_per_gpu(tp)
    inter = model.intermediate_size // tp
    vocab = -(-model.vocab_size // tp)
    gemm = {"qkv_proj": (h, (qh + 2 * kvh) * hd), "attn_out_proj": (qh * hd, h),
            "mlp_up_gate": (h, 2 * inter), "mlp_down": (inter, h), "lm_head": (h, vocab)}
    if op in gemm:
        k, m = gemm[op]
        return 2.0 * n * k * m, b * (n * k + k * m + n * m)
    elementwise = {"rope": (6.0 * (qh + kvh) * hd, 2 * b * (qh + kvh) * hd), "act": (4.0 * inter, 3 * b * inter),
                   "rmsnorm": (4.0 * h, 2 * b * h), "residual_add": (1.0 * h, 3 * b * h),
                   "embedding": (0.0, 2 * b * h), "sampling": (5.0 * model.vocab_size, 4 * model.vocab_size)}
    per_flop, per_byte = elementwise[op]
    return per_flop * n, per_byte * n


def true_op_ms(model: ModelConfig, tp: int, op: str, n: float) -> float:
    flops, bytes_ = op_work(model, tp, op, n)
    return LAUNCH_MS + max(flops / FLOPS_PER_MS, bytes_ / BYTES_PER_MS)


def true_attention_ms(model: ModelConfig, tp: int, composition) -> float:
    """A FlashAttention-2-like cost: launch + compute over allowed pairs + KV streaming, with a floor at
    the slowest thread block (a nearly empty GPU cannot go faster). Decode-only launches read KV once per
    KV head and, when they would not fill the GPU, split each sequence's KV over several blocks (FA2's
    heuristic), which shortens the slowest block."""
    from simulator.runtime.features import fa2_num_splits

    qh, kvh, hd = model.num_q_heads // tp, model.kv_heads_per_gpu(tp), model.head_dim
    longest = max(q + p for q, p in composition)
    per_token_block_ms = 4 * hd / (0.02 * BYTES_PER_MS)
    if all(q == 1 for q, _ in composition):
        kv_bytes = sum(1 + p for _, p in composition) * 4 * hd * kvh
        blocks = -(-longest // 128)
        splits = fa2_num_splits(len(composition) * kvh, 264, blocks)
        slowest = min(longest, -(-blocks // splits) * 128) * per_token_block_ms
        return 0.006 + max(kv_bytes / (0.8 * BYTES_PER_MS), slowest) + 0.0004 * len(composition)
    pairs = sum(q * p + q * (q + 1) / 2 for q, p in composition)
    kv_bytes = sum((q + p) * -(-q // 128) for q, p in composition) * 4 * hd * qh
    work = max(4 * hd * qh * pairs / (0.6 * FLOPS_PER_MS), kv_bytes / (0.8 * BYTES_PER_MS))
    return 0.006 + max(work, longest * per_token_block_ms) + 0.0004 * len(composition)


def attention_compositions(seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    comps = []
    for chunk in [16, 64, 128, 256, 512, 1024, 2048]:
        for prefix in [0, 256, 1024, 2048]:
            comps.append([[chunk, prefix]])
    for batch in [1, 2, 4, 8, 16, 32, 64, 128]:
        for ctx in [128, 512, 1024, 2048, 3072]:
            comps.append([[1, ctx]] * batch)
    for _ in range(40):
        batch = int(rng.integers(2, 64))
        comps.append([[1, int(c)] for c in rng.integers(16, 3000, size=batch)])
    for _ in range(60):
        chunks = [[int(rng.choice([64, 128, 256, 512, 1024])), int(rng.integers(0, 2048))]
                  for _ in range(int(rng.integers(1, 3)))]
        decodes = [[1, int(c)] for c in rng.integers(16, 3000, size=int(rng.integers(0, 48)))]
        comps.append(chunks + decodes)
    return comps


def _kind(comp) -> str:
    decodes = sum(q == 1 for q, _ in comp)
    return "decode" if decodes == len(comp) else "prefill" if decodes == 0 else "mixed"


def _timing(ms: float) -> dict:
    return {"time_ms": ms, "p10_ms": ms * 0.99, "p90_ms": ms * 1.01, "repeats": 20}


def write_profiles(root: Path, model: ModelConfig = TINY_MODEL, gpu: HardwareConfig = TEST_GPU,
                   tps=(1, 2), comm: bool = True) -> Path:
    """Write data-like tables under root/profiles/<gpu>/... and root/validation/...; returns root/profiles."""
    profiles = root / "profiles"
    model_dir = profiles / gpu.profile / model.name
    model_dir.mkdir(parents=True, exist_ok=True)
    op_rows, attn_rows = [], []
    for tp in tps:
        for op in ["qkv_proj", "rope", "attn_out_proj", "mlp_up_gate", "act", "mlp_down", "rmsnorm",
                   "residual_add", "embedding", "lm_head", "sampling"]:
            for n in TOKENS:
                flops, bytes_ = op_work(model, tp, op, n)
                ms = true_op_ms(model, tp, op, n) * _noise(f"{tp}{op}{n}")
                op_rows.append({"tp": tp, "op": op, "num_tokens": n, **_timing(ms), "flops": flops, "bytes": bytes_,
                                "tflops": flops / ms / 1e9, "tbps": bytes_ / ms / 1e9})
        for comp in attention_compositions():
            ms = true_attention_ms(model, tp, comp) * _noise(f"{tp}{comp}")
            qs = [q for q, _ in comp]
            kvs = [p for _, p in comp]
            attn_rows.append({
                "tp": tp, "num_q_heads": model.num_q_heads // tp, "num_kv_heads": model.kv_heads_per_gpu(tp),
                "head_dim": model.head_dim, "kind": _kind(comp), "backend": "synthetic",
                "composition": json.dumps(comp), "batch_size": len(comp),
                "num_prefills": sum(q > 1 for q in qs), "num_decodes": sum(q == 1 for q in qs),
                "q_tokens_total": sum(qs), "kv_tokens_total": sum(kvs), "max_q_tokens": max(qs),
                "max_kv_tokens": max(kvs), **_timing(ms), "flops": 0.0, "bytes": 0.0, "tflops": 0.0, "tbps": 0.0,
            })
    pd.DataFrame(op_rows).to_csv(model_dir / "ops.csv", index=False)
    pd.DataFrame(attn_rows).to_csv(model_dir / "attention.csv", index=False)
    (model_dir / "meta.json").write_text(json.dumps({"made_by": "tests/runtime/synthetic.py (test fixture)"}))
    if comm:
        comm_dir = profiles / gpu.comm_profile / "comm"
        comm_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for op, world in [("all_reduce", 2), ("send_recv", 2)]:
            for size in 2 ** np.arange(10, 29, 2):
                ms = true_comm_ms(op, float(size))
                rows.append({"op": op, "world_size": world, "dtype": "bfloat16", "bytes": int(size), **_timing(ms),
                             "algbw_gbps": size / ms / 1e6, "busbw_gbps": size / ms / 1e6})
        pd.DataFrame(rows).to_csv(comm_dir / "comm.csv", index=False)
    return profiles


def true_comm_ms(op: str, size: float) -> float:
    return (0.010 if op == "all_reduce" else 0.008) + size / (300e9 if op == "all_reduce" else 150e9) * 1e3
