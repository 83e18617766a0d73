"""Profile one or more models: ops.csv.gz, attention.csv.gz and meta.json under <out>/<gpu>/<model>/.

Every distinct (op, shape) is measured once per run and written into each model's tables that need it
(meta.json says which rows were shared and from which model). Rows are appended as they are measured; a
rerun skips rows already on disk and copies shared rows from tables that already have them, so an
interrupted run resumes where it stopped. While a run measures, its tables are plain .csv files (a run
killed outright leaves them so, and the next run resumes from them); they are gzipped when it ends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from profiler.attention import build_attention, choose_backend
from profiler.env import environment, l2_bytes, measure_peaks, memory_bytes
from profiler.grid import (
    AttentionPoint,
    OpPoint,
    attention_grid,
    composition_json,
    composition_kind,
    kv_capacity_tokens,
    op_grid,
)
from profiler.ops import build_op
from profiler.progress import progress
from profiler.schema import ATTENTION_COLUMNS, ATTENTION_CSV, OP_NAMES, OPS_COLUMNS, OPS_CSV
from profiler.tables import ResumableCsv, attention_key, ops_key, read_json, write_json
from profiler.timing import TimingSettings, input_sets_needed, time_call
from simulator.config import ModelConfig

IMPLEMENTATION = {
    "qkv_proj": "F.linear (cuBLAS), bf16",
    "rope": "torch eager: index_select of a cos/sin table + rotate-half on q and k (unfused, several kernels)",
    "attn_out_proj": "F.linear (cuBLAS), bf16",
    "mlp_up_gate": "F.linear (cuBLAS), gate and up fused in one weight",
    "act": "torch eager silu(gate) * up (two kernels)",
    "mlp_down": "F.linear (cuBLAS), bf16",
    "rmsnorm": "F.rms_norm (torch's fused kernel)",
    "residual_add": "in-place add_",
    "embedding": "F.embedding; TP shards mask ids outside their rows (VocabParallelEmbedding)",
    "lm_head": "F.linear over rows = sequences (last tokens) or all tokens",
    "sampling": "float32 softmax with per-row temperature, argmax(probs / Exp(1) noise) (vLLM's sampler)",
}


@dataclass
class ModelTables:
    """One model's output directory and its two resumable tables."""

    model: ModelConfig
    directory: Path
    ops: ResumableCsv
    attention: ResumableCsv
    measured: int = 0
    shared_from: dict = field(default_factory=dict)   # source model -> rows copied from it
    measured_seconds: float = 0.0


@dataclass
class Job:
    """One distinct measurement and every (tables, point) that wants it."""

    family: str
    shape_key: tuple
    destinations: list = field(default_factory=list)  # [(ModelTables, OpPoint | AttentionPoint)]


def family_of(point) -> str:
    if isinstance(point, OpPoint):
        return point.op
    return "attention_" + composition_kind(point.composition)


def plan_jobs(tables: list[ModelTables], grids: dict) -> list[Job]:
    """Group every model's points by shape_key, in order of first appearance (model by model)."""
    jobs: dict[tuple, Job] = {}
    for t in tables:
        for point in grids[t.model.name]:
            job = jobs.setdefault(point.shape_key, Job(family_of(point), point.shape_key))
            job.destinations.append((t, point))
    return list(jobs.values())


def table_of(t: ModelTables, point) -> ResumableCsv:
    return t.ops if isinstance(point, OpPoint) else t.attention


def build_row(point, stats, flops: float, bytes_: float, backend: str) -> dict:
    """A row of ops.csv or attention.csv from a point and its timing."""
    seconds = stats["time_ms"] * 1e-3
    work = {"flops": flops, "bytes": bytes_,
            "tflops": flops / seconds / 1e12 if seconds > 0 else 0.0,
            "tbps": bytes_ / seconds / 1e12 if seconds > 0 else 0.0}
    timing = {k: stats[k] for k in ("time_ms", "p10_ms", "p90_ms", "repeats")}
    if isinstance(point, OpPoint):
        return {"tp": point.tp, "op": point.op, "num_tokens": point.num_tokens, **timing, **work}
    comp = point.composition
    return {
        "tp": point.tp, "num_q_heads": point.num_q_heads, "num_kv_heads": point.num_kv_heads,
        "head_dim": point.head_dim, "kind": composition_kind(comp), "backend": backend,
        "composition": composition_json(comp), "batch_size": len(comp),
        "num_prefills": sum(1 for q, _ in comp if q > 1), "num_decodes": sum(1 for q, _ in comp if q == 1),
        "q_tokens_total": sum(q for q, _ in comp), "kv_tokens_total": sum(p for _, p in comp),
        "max_q_tokens": max(q for q, _ in comp), "max_kv_tokens": max(p for _, p in comp),
        **timing, **work,
    }


def retarget(row: dict, point) -> dict:
    """A measured row rewritten for another destination point (its tp/op name may differ)."""
    out = dict(row)
    if isinstance(point, OpPoint):
        out.update(tp=point.tp, op=point.op, num_tokens=point.num_tokens)
    else:
        out.update(tp=point.tp)
    return out


@dataclass
class ProfileRequest:
    """What to profile (built by the CLI)."""

    models: list[ModelConfig]
    tps: list[int]
    out_dir: Path
    gpu: str
    device: torch.device
    dtype: torch.dtype = torch.bfloat16
    ops: list[str] = field(default_factory=lambda: list(OP_NAMES))
    attention: bool = True
    tiny: bool = False
    max_tokens: int | None = None      # ops grid top; default max(16384, max_model_len)
    settings: TimingSettings = field(default_factory=TimingSettings)
    backend: str | None = None
    repeat_sample: int = 40            # points re-timed for the repeatability check
    time_limit_s: float | None = None  # stop cleanly (meta marked incomplete) after this long
    command: str = ""
    seed: int = 0


def run_profile(req: ProfileRequest, log=print) -> dict:
    """Measure every missing row of every requested model; returns the run summary written to meta.json."""
    # Every table is gzipped again when the run ends: complete, at its time limit or interrupted.
    with contextlib.ExitStack() as open_tables:
        return _run_profile(req, open_tables, log)


def _run_profile(req: ProfileRequest, open_tables: contextlib.ExitStack, log) -> dict:
    started = time.perf_counter()
    env = environment(req.device)
    log(f"device: {env.get('gpu_name', env.get('cpu'))}; torch {env['torch']}, CUDA {env['cuda']}")
    peaks = measure_peaks(req.device, req.dtype)
    log(f"peaks: matmul {peaks['matmul_tflops']:.4g} TFLOP/s, copy {peaks['copy_tbps']:.4g} TB/s, "
        f"read {peaks['read_tbps']:.4g} TB/s")
    backend, checks = choose_backend(req.device, req.dtype, req.backend)
    log(f"attention backend: {backend} (max rel. error vs float32 reference "
        f"{checks[-1]['max_rel_error']:.2e})")

    mem, l2 = memory_bytes(req.device), l2_bytes(req.device)
    element = torch.tensor([], dtype=req.dtype).element_size()
    tables, grids = [], {}
    for model in req.models:
        directory = req.out_dir / req.gpu / model.name
        ops = open_tables.enter_context(
            ResumableCsv(directory / OPS_CSV, OPS_COLUMNS, ops_key, compressed=True))
        attention = open_tables.enter_context(
            ResumableCsv(directory / ATTENTION_CSV, ATTENTION_COLUMNS, attention_key, compressed=True))
        t = ModelTables(model, directory, ops, attention)
        tables.append(t)
        tps = [tp for tp in req.tps if _divides(model, tp)]
        max_tokens = req.max_tokens or (64 if req.tiny else max(16384, model.max_model_len))
        points: list = op_grid(model, tps, req.ops, max_tokens)
        if req.attention:
            for tp in tps:
                # Batches up to what a replica of <= 8 GPUs holds (pipeline stages free memory for KV),
                # and one launch's K+V within a quarter of the device's memory.
                per_token = 2 * model.kv_heads_per_gpu(tp) * model.head_dim * element
                capacity = kv_capacity_tokens(model, tp, mem, pp=min(model.num_layers, max(1, 8 // tp)))
                points += attention_grid(model, tp, capacity, int(0.25 * mem // per_token), seed=req.seed,
                                         tiny=req.tiny)
        grids[model.name] = points

    jobs = plan_jobs(tables, grids)
    family_seconds: dict[str, float] = {}
    measured_jobs: list = []
    skipped: list = []
    complete = True
    sets_for = lambda footprint: input_sets_needed(footprint, l2, req.settings)
    for job in progress(jobs, "profile"):
        if req.time_limit_s and time.perf_counter() - started > req.time_limit_s:
            complete = False
            log(f"time limit {req.time_limit_s:.0f} s reached: stopping; rerun the same command to resume")
            break
        pending = [(t, p) for t, p in job.destinations if p.row_key not in table_of(t, p)]
        if not pending:
            continue
        source = next(((t, p) for t, p in job.destinations if p.row_key in table_of(t, p)), None)
        if source is not None:  # measured by an earlier run for another model: copy, don't re-measure
            t0, p0 = source
            row = table_of(t0, p0).find(p0.row_key)
            for t, p in pending:
                table_of(t, p).append(retarget(row, p))
                _note_shared(t, t0.model.name + " (earlier run)", p)
            continue
        first_t, first_p = pending[0]
        job_start = time.perf_counter()
        try:
            row, bench_info = measure_point(first_p, backend, req, sets_for)
        except torch.OutOfMemoryError as e:
            skipped.append({"model": first_t.model.name, "family": job.family, "point": _describe(first_p),
                            "reason": f"out of memory: {str(e)[:200]}"})
            _free(req.device)
            continue
        seconds = time.perf_counter() - job_start
        family_seconds[job.family] = family_seconds.get(job.family, 0.0) + seconds
        first_t.measured_seconds += seconds
        measured_jobs.append((first_t, first_p, row, bench_info))
        for i, (t, p) in enumerate(pending):
            table_of(t, p).append(retarget(row, p))
            if i == 0 or t is first_t:
                t.measured += 1
            else:
                _note_shared(t, first_t.model.name, p)

    repeat = repeatability(measured_jobs, backend, req, sets_for, log) if complete else None
    over_peak = rows_over_peak(measured_jobs, peaks, l2)
    run = {
        "command": req.command,
        "date_utc": env["date_utc"],
        "complete": complete,
        "seconds_total": time.perf_counter() - started,
        "seconds_by_family": dict(sorted(family_seconds.items())),
        "rows_measured_this_run": len(measured_jobs),
        "repeatability": repeat,
        "rows_over_peak": over_peak,
        "skipped": skipped,
        "points_timed_eagerly": [_describe(p) for _, p, _, info in measured_jobs if not info["used_graph"]]
        if req.device.type == "cuda" and req.settings.use_graphs else "all (no CUDA graphs on this device)",
    }
    for t in tables:
        _write_meta(t, req, env, peaks, backend, checks, run, grids[t.model.name])
    log_summary(run, log)
    return run


def _note_shared(t: ModelTables, source: str, point) -> None:
    """Count a row copied from `source`'s measurement, grouped as '<op or attention kind>@tp<N>'."""
    group = f"{family_of(point)}@tp{point.tp}"
    by_group = t.shared_from.setdefault(source, {})
    by_group[group] = by_group.get(group, 0) + 1


def _divides(model: ModelConfig, tp: int) -> bool:
    try:
        model.validate_tp(tp)
        return True
    except ValueError:
        return False


def measure_point(point, backend: str, req: ProfileRequest, sets_for) -> tuple[dict, dict]:
    """Build inputs for one point, time it, return (row, facts about the benchmark)."""
    seed = req.seed + zlib.crc32(repr(point.shape_key).encode())  # stable across processes
    if isinstance(point, OpPoint):
        bench = build_op(point.shape, point.num_tokens, req.device, req.dtype, sets_for, seed=seed)
    else:
        bench = build_attention(point, backend, req.device, req.dtype, sets_for, seed=seed)
    stats = time_call(bench.call, bench.num_sets, req.device, req.settings)
    info = {"footprint_bytes": bench.footprint_bytes, "num_sets": bench.num_sets, "used_graph": stats.used_graph,
            "calls_per_replay": stats.calls_per_replay}
    row = build_row(point, stats.row(), bench.flops, bench.bytes, backend)
    del bench
    return row, info


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _describe(point) -> str:
    if isinstance(point, OpPoint):
        return f"tp={point.tp} {point.op} n={point.num_tokens}"
    return f"tp={point.tp} attention {composition_json(point.composition)[:120]}"


def repeatability(measured_jobs, backend, req: ProfileRequest, sets_for, log) -> dict | None:
    """Re-time a seeded random sample of this run's points; report how far the second timing is from the
    first (|t2 / t1 - 1|), median and 90th percentile."""
    if not measured_jobs:
        return None
    rng = random.Random(req.seed + 7)
    sample = rng.sample(measured_jobs, min(req.repeat_sample, len(measured_jobs)))
    deviations = []
    for _, point, row, _ in progress(sample, "repeatability"):
        again, _ = measure_point(point, backend, req, sets_for)
        first = float(row["time_ms"])
        deviations.append((abs(again["time_ms"] / first - 1.0), _describe(point), first, again["time_ms"]))
    deviations.sort()
    values = [d[0] for d in deviations]
    median = values[len(values) // 2]
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    log(f"repeatability: median |t2/t1 - 1| = {100 * median:.2f}% over {len(values)} points (p90 {100 * p90:.2f}%)")
    return {"points": len(values), "median_abs_rel_diff": median, "p90_abs_rel_diff": p90,
            "worst": [{"point": d[1], "first_ms": d[2], "second_ms": d[3]} for d in reversed(deviations[-5:])]}


def rows_over_peak(measured_jobs, peaks: dict, l2: int) -> list[dict]:
    """Rows whose achieved rate exceeds the measured matmul or copy ceiling, with the likely reason."""
    out = []
    for _, point, row, info in measured_jobs:
        over_flops = row["tflops"] > peaks["matmul_tflops"]
        over_bytes = row["tbps"] > peaks["memory_tbps"]
        if not (over_flops or over_bytes):
            continue
        working_set = info["footprint_bytes"] * info["num_sets"]
        if working_set <= l2:
            why = (f"working set {working_set / 2**20:.1f} MiB (all rotated input sets) fits in the "
                   f"{l2 / 2**20:.0f} MiB L2: served from cache, as it would be inside a forward pass")
        elif over_flops and isinstance(point, OpPoint) and point.shape[0] == "linear":
            why = "faster than the 8192^3 reference matmul: this GEMM shape runs closer to the tensor-core peak"
        elif over_flops:
            why = ("above the matmul peak measured once at the start: the reference run was slowed (a shared "
                   "or throttled machine) or this op's flops are counted generously")
        else:
            why = ("more bytes/s than the measured copy/read ceilings: part of the inputs stays in L2 between "
                   "rotated sets, or the op reads fewer bytes than counted")
        out.append({"point": _describe(point), "tflops": row["tflops"], "tbps": row["tbps"], "why": why})
    return out


def _write_meta(t: ModelTables, req: ProfileRequest, env: dict, peaks: dict, backend: str, checks: list,
                run: dict, points: list) -> None:
    path = t.directory / "meta.json"
    old = read_json(path)
    runs = old.get("runs", []) + [{**run, "rows_measured_for_this_model": t.measured,
                                   "rows_shared_from": t.shared_from,
                                   "seconds_measuring_for_this_model": t.measured_seconds}]
    shared_total: dict = {}
    for r in runs:
        for source, groups in r.get("rows_shared_from", {}).items():
            count = sum(groups.values()) if isinstance(groups, dict) else groups
            shared_total[source] = shared_total.get(source, 0) + count
    meta = {
        "what": f"Kernel timings of one layer of {t.model.name} (per-GPU TP shards), see docs/profiler.md",
        "model": dataclasses.asdict(t.model),
        "gpu": req.gpu,
        "environment": env,
        "attention_backend": backend,
        "attention_layout": "packed varlen: contiguous K/V per sequence (prefix then new tokens), no paging",
        "attention_check": checks,
        "peaks": peaks,
        "dtype": str(req.dtype).replace("torch.", ""),
        "tp_degrees": [tp for tp in req.tps if _divides(t.model, tp)],
        "timing": {
            **dataclasses.asdict(req.settings),
            "method": ("CUDA-graph replays of back-to-back calls cycling over rotated random input sets "
                       "(no launch gaps; eager fallback if capture fails), CUDA events, median and p10/p90 "
                       "over replays" if req.device.type == "cuda" else
                       "perf_counter around each call after warm-up, median and p10/p90 over calls"),
            "cuda_graphs": req.device.type == "cuda" and req.settings.use_graphs,
        },
        "implementation": {op: IMPLEMENTATION[op] for op in req.ops},
        "columns": {"kv_tokens_total": "sum of kv_prefix_tokens (cached before this launch)",
                    "bytes": "fewest bytes the op must move (inputs once, outputs once)"},
        "grid_points": {"ops": sum(isinstance(p, OpPoint) for p in points),
                        "attention": sum(isinstance(p, AttentionPoint) for p in points)},
        "rows": {"ops": len(t.ops.keys), "attention": len(t.attention.keys)},
        "rows_shared_from": shared_total,  # rows not measured for this model: same shapes as the source's

        "complete": run["complete"] and len(t.ops.keys) + len(t.attention.keys) >= len(points) - len(run["skipped"]),
        "runs": runs,
    }
    write_json(path, meta)


def log_summary(run: dict, log) -> None:
    log(f"run: {run['seconds_total']:.1f} s, {run['rows_measured_this_run']} points measured, "
        f"complete={run['complete']}")
    for family, seconds in run["seconds_by_family"].items():
        log(f"  {family:<20s} {seconds:8.1f} s")
    if run["rows_over_peak"]:
        log(f"  {len(run['rows_over_peak'])} rows above a measured peak (listed in meta.json)")
    if run["skipped"]:
        log(f"  {len(run['skipped'])} points skipped (listed in meta.json)")
