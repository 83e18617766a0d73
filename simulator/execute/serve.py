"""One real execution from a SimulationConfig: the same workload, policy and KV sizing the simulator uses.

    runner = build_runner(cfg, "cuda")
    summary = run_execution(cfg, runner, "out/vllm_conv_60")

writes the simulator's result files (requests/iterations/token_times parquet, summary.json) plus
steps.parquet (where each iteration's time went), compositions.parquet (every batch, request by request),
config.json (the SimulationConfig, so `servesim-compare` simulates exactly this) and execution.json
(machine, clock, model build facts). Only pp = tp = 1 and one replica are executed.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from simulator.config import ConfigError

GIB = 1024**3


def config_dict(cfg) -> dict:
    """The SimulationConfig as plain JSON-ready data (SimulationConfig.from_dict reads it back)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def check_executable(cfg) -> None:
    """Raise ConfigError unless the config is one replica without tensor or pipeline parallelism."""
    c = cfg.cluster
    if c.disagg is not None:
        raise ConfigError("real execution runs one colocated replica; cluster.disagg sets prefill and decode pools")
    if (c.num_replicas, c.tp, c.pp) != (1, 1, 1):
        raise ConfigError(f"real execution runs one replica on one GPU; got cluster.num_replicas="
                          f"{c.num_replicas}, cluster.tp={c.tp}, cluster.pp={c.pp}")


def caches_prefixes(policy) -> bool:
    """Whether a PolicyConfig's policy keeps a prefix cache: its enable_prefix_caching, else the policy's
    default (on for vllm_v1 and sglang, off for vllm and sarathi, absent elsewhere)."""
    from simulator.parts import effective_policy_params

    return bool(effective_policy_params(policy).get("enable_prefix_caching", False))


def build_runner(cfg, device: str, num_layers: int | None = None, cuda_graphs: bool = True,
                 kv_capacity_tokens: int | None = None, log=print, prefix_store: bool | None = None):
    """The model of `cfg` on `device` with a slot KV cache as large as the simulator's cache for this
    config (or `kv_capacity_tokens`), checked for correct attention before it is returned.

    prefix_store: keep rows for the K/V of every prefix-cache block (simulator/execute/prefix_rows.py), so
    cached prompt tokens are reused rather than recomputed; None: when cfg's policy caches prefixes. The
    store takes the simulated cache's size from the device memory left for slots."""
    import torch

    from simulator.execute.runner import TorchModelRunner, kv_rows_that_fit
    from simulator.kv_cache import kv_cache_blocks_per_gpu

    check_executable(cfg)
    started = time.perf_counter()
    simulated_tokens = kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster) * cfg.cluster.block_size
    if prefix_store is None:
        prefix_store = caches_prefixes(cfg.policy)
    store_tokens = simulated_tokens if prefix_store else 0
    if kv_capacity_tokens is None:
        kv_capacity_tokens = simulated_tokens
        if torch.device(device).type == "cuda":
            # Piecewise graphs keep their pieces' outputs for every capture size used: more headroom.
            headroom = (12 if cfg.engine.cuda_graphs == "piecewise" else 6) * GIB
            fits = kv_rows_that_fit(cfg.model, device, headroom) - store_tokens
            if fits < cfg.model.max_model_len:
                raise ConfigError(
                    f"the GPU holds {fits + store_tokens} KV rows: after the prefix store's {store_tokens} "
                    f"(the simulated cache) no slot of {cfg.model.max_model_len} tokens fits; lower "
                    f"cluster.gpu_memory_utilization (a smaller simulated cache) or run without prefix caching")
            if store_tokens:
                # Requests sharing a cached prefix each hold a whole slot: give slots all the room left.
                kv_capacity_tokens = fits
            elif fits < kv_capacity_tokens:
                log(f"the GPU holds {fits} KV slot tokens, fewer than the simulated cache's {kv_capacity_tokens}; "
                    f"slots come from the smaller space (the policy still accounts the simulated size)")
                kv_capacity_tokens = fits
    runner = TorchModelRunner(cfg.model, device, kv_capacity_tokens, num_layers=num_layers,
                              cuda_graphs=cuda_graphs, seed=cfg.seed, engine=cfg.engine, store_tokens=store_tokens)
    runner.attention_check_error = runner.check_slot_attention()
    runner.build_s = time.perf_counter() - started
    log(f"{cfg.model.name}: {runner.shard.num_layers} layers on {device}, "
        f"KV slots for {kv_capacity_tokens} tokens"
        f"{f' and a prefix store of {store_tokens}' if store_tokens else ''}, "
        f"attention {runner.shard.backend} (check error {runner.attention_check_error:.2g}), "
        f"engine {cfg.engine.name} ({cfg.engine.attention_launch} attention, {cfg.engine.cuda_graphs} graphs), "
        f"built in {runner.build_s:.1f} s")
    return runner


def warm_up(runner, prefill_tokens=(512, 2048), decode_batches=(1, 8, 32)) -> float:
    """Run a few throw-away batches so first-use costs (kernel loading, cuBLAS heuristics, allocator
    growth) fall outside the measurements. Returns the seconds it took."""
    import numpy as np

    started = time.perf_counter()
    first_id = 1 << 40  # ids no real request uses
    room = runner.slots.capacity_tokens // 2  # warm-up stays small next to the cache
    for i, n in enumerate(min(n, runner.model.max_model_len - 64, room - 64) for n in prefill_tokens):
        one = np.array([first_id + i])
        runner.execute(one, np.array([n]), np.array([0]), np.array([n]), np.array([0]), np.array([n + 64]))
        runner.release(one.tolist())
    for b in (b for b in decode_batches if b * 128 <= room):
        batch = np.arange(first_id + 100, first_id + 100 + b)
        zeros, ones = np.zeros(b, np.int64), np.ones(b, np.int64)
        runner.execute(batch, 64 * ones, zeros, 64 * ones, zeros, 128 * ones)
        runner.execute(batch, ones, 64 * ones, 64 * ones, ones, 128 * ones)
        runner.release(batch.tolist())
    return time.perf_counter() - started


def run_execution(cfg, runner, out_dir: str | Path, clock: str = "busy", progress: bool = False,
                  stop_at: float | None = None) -> dict:
    """Serve cfg's workload with cfg's policy on `runner`; write the result files; return the summary.
    stop_at: perf_counter() time after which the run is abandoned (execute.loop.ExecutionTimeout)."""
    import numpy as np

    from simulator import metrics
    from simulator.execute.loop import execute
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState
    from simulator.run import policy_factory
    from simulator.slo import evaluate_slos
    from simulator.workload import load_workload

    check_executable(cfg)
    started = time.perf_counter()
    make_policy = policy_factory(cfg.policy, hardware=cfg.hardware, engine=cfg.engine)
    kv_blocks = kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster)
    workload = load_workload(cfg.workload, cfg.seed)
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len, content=workload.content)
    capture_before = getattr(runner, "graph_capture_s", 0.0)
    out = execute(requests, make_policy, runner, kv_blocks, block_size=cfg.cluster.block_size,
                  kv_watermark=cfg.cluster.kv_watermark, clock=clock, progress=progress, stop_at=stop_at)
    wall_s = time.perf_counter() - started
    summary = metrics.summarize(out.records, out.iterations, out.served_s, wall_s)
    metrics.add_prefix_cache_counts(summary, out.prefix_cache)
    summary["setup"] = {
        "model": cfg.model.name, "hardware": cfg.hardware.name, "num_replicas": 1, "tp": 1, "pp": 1,
        "policy": cfg.policy.name, "policy_params": cfg.policy.policy_kwargs(), "workload": workload.name,
        "predictor": "measured (real execution)", "seed": cfg.seed, "kv_blocks_per_engine": kv_blocks,
        "kv_block_size": cfg.cluster.block_size, "clock": clock,
    }
    request_table = metrics.request_table(out.records)
    summary["slo"] = evaluate_slos(cfg.slo, request_table, metrics.tbt_gaps_s(out.records))
    out_dir = Path(out_dir)
    metrics.write_outputs(out_dir, out.records, out.iterations, summary)
    out.steps.to_parquet(out_dir / "steps.parquet", index=False)
    out.compositions.to_parquet(out_dir / "compositions.parquet", index=False)
    (out_dir / "config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
    shard = getattr(runner, "shard", None)
    facts = {
        "what": "real execution of this config (simulator.execute); see docs/fidelity.md",
        "clock": clock,
        "device": str(getattr(runner, "device", "none")),
        "num_layers": getattr(shard, "num_layers", None),
        "dtype": str(getattr(shard, "dtype", "")).replace("torch.", ""),
        "attention_backend": getattr(shard, "backend", None),
        "attention_check_error": getattr(runner, "attention_check_error", None),
        "cuda_graphs": getattr(runner, "cuda_graphs", False),
        "engine": cfg.engine.describe(),
        "piecewise_capture_sizes": sorted(getattr(getattr(runner, "pieces", None), "sizes", {})),
        "graphs_captured_total": len(getattr(runner, "graphs", {})),
        "graph_capture_s_this_run": getattr(runner, "graph_capture_s", 0.0) - capture_before,
        "kv_slot_tokens": getattr(getattr(runner, "slots", None), "capacity_tokens", None),
        "prefix_reuse": runner.prefix.facts() if getattr(runner, "prefix", None) is not None else None,
        "served_s": out.served_s,
        "wall_s": wall_s,
        "iterations": len(out.steps),
        "graph_iterations": int((out.steps["path"] == "graph").sum()),
        "piecewise_iterations": int((out.steps["path"] == "piecewise").sum()),
        "mean_exposed_cpu_ms": float(np.nanmean(out.steps["duration_s"] - out.steps["gpu_s"]) * 1e3)
        if len(out.steps) and out.steps["gpu_s"].notna().any() else None,
    }
    (out_dir / "execution.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    return summary
