"""Fidelity metrics: latency percentiles and throughput of a requests table, signed errors, iteration
times replayed batch by batch, and the host (CPU) time a real execution exposes per iteration."""
from __future__ import annotations

import numpy as np
import pandas as pd

LATENCY_METRICS = ("ttft_s", "tbt_s", "e2e_s")
PERCENTILES = (50, 90, 99)
# The targets: per-iteration median |error| <= 5 %; these within 10 % at every load up to 85 %.
ITERATION_TARGET_PCT = 5.0
LATENCY_TARGET_PCT = 10.0
TARGET_METRICS = ("ttft_s_p50", "tbt_s_p99", "e2e_s_p50")


def tbt_gaps_from_tokens(token_times: pd.DataFrame) -> np.ndarray:
    """Every gap between consecutive tokens of the same request (s), from a token_times table
    (request_id, token_index, time_s)."""
    ordered = token_times.sort_values(["request_id", "token_index"], kind="stable")
    times = ordered["time_s"].to_numpy(dtype=np.float64)
    owner = ordered["request_id"].to_numpy()
    same = owner[1:] == owner[:-1]
    return np.diff(times)[same]


def latency_metrics(requests: pd.DataFrame, token_times: pd.DataFrame) -> dict:
    """{ttft_s_p50, ..., e2e_s_p99, throughput_rps, output_tokens_per_s, completed} from a requests
    table (metrics.request_table columns) and its token_times table."""
    done = requests[~requests["rejected"].astype(bool) & requests["completed_s"].notna()]
    values = {"ttft_s": done["ttft_s"].to_numpy(), "e2e_s": done["e2e_s"].to_numpy(),
              "tbt_s": tbt_gaps_from_tokens(token_times[token_times["request_id"].isin(done["request_id"])])}
    out = {}
    for metric in LATENCY_METRICS:
        finite = values[metric][np.isfinite(values[metric])]
        for p in PERCENTILES:
            out[f"{metric}_p{p}"] = float(np.percentile(finite, p)) if len(finite) else float("nan")
    makespan = float(done["completed_s"].max() - requests["arrived_s"].min()) if len(done) else float("nan")
    out["throughput_rps"] = len(done) / makespan if makespan > 0 else float("nan")
    tokens = float(done["output_tokens"].sum())
    out["output_tokens_per_s"] = tokens / makespan if makespan > 0 else float("nan")
    out["completed"] = len(done)
    if "cached_tokens" in done:  # prefix caching: the share of prompt tokens served from the cache
        prompt = float(done["prompt_tokens"].sum())
        out["prefix_hit_rate"] = float(done["cached_tokens"].sum()) / prompt if prompt else float("nan")
    return out


def signed_error_pct(simulated: float, measured: float) -> float:
    """(simulated - measured) / measured in %; NaN when measured is 0 or either is missing."""
    if not (np.isfinite(simulated) and np.isfinite(measured)) or measured == 0:
        return float("nan")
    return (simulated - measured) / measured * 100.0


def iteration_replay(compositions: pd.DataFrame, predict) -> np.ndarray:
    """predict(q_tokens, kv_tokens) -> seconds for each executed iteration's exact batch, in iteration
    order (compositions: iteration, request_id, num_tokens, kv_tokens)."""
    comp = compositions.sort_values("iteration", kind="stable")
    iteration = comp["iteration"].to_numpy()
    q, kv = comp["num_tokens"].to_numpy(), comp["kv_tokens"].to_numpy()
    bounds = np.flatnonzero(np.diff(iteration)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(iteration)]])
    out = np.full(int(iteration.max()) + 1 if len(iteration) else 0, np.nan)
    for s, e in zip(starts.tolist(), ends.tolist()):
        out[iteration[s]] = predict(q[s:e], kv[s:e])
    return out


def abs_error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict:
    """Median, P90 and mean signed of the per-item error (predicted - measured) / measured, in %."""
    ok = np.isfinite(predicted) & np.isfinite(measured) & (measured > 0)
    err = (predicted[ok] - measured[ok]) / measured[ok] * 100.0
    if len(err) == 0:
        nan = float("nan")
        return {"n": 0, "median_abs_pct": nan, "p90_abs_pct": nan, "mean_signed_pct": nan}
    return {"n": len(err), "median_abs_pct": float(np.median(np.abs(err))),
            "p90_abs_pct": float(np.percentile(np.abs(err), 90)), "mean_signed_pct": float(err.mean())}


def iteration_kind(steps: pd.DataFrame) -> np.ndarray:
    """prefill / decode / mixed of each executed iteration."""
    prefill, decode = steps["num_prefill_tokens"].to_numpy() > 0, steps["num_decode_tokens"].to_numpy() > 0
    return np.where(prefill & decode, "mixed", np.where(prefill, "prefill", "decode"))


def host_time_line(batch_size: np.ndarray, exposed_s: np.ndarray) -> tuple[float, float] | None:
    """Least squares of exposed host time = fixed + per_sequence x batch size over the finite samples:
    (fixed_s, per_sequence_s), or None with fewer than 3 of them or a single batch size."""
    ok = np.isfinite(exposed_s)
    if ok.sum() < 3 or len(np.unique(batch_size[ok])) < 2:
        return None
    design = np.column_stack([np.ones(int(ok.sum())), batch_size[ok]])
    (fixed, per_sequence), *_ = np.linalg.lstsq(design, exposed_s[ok], rcond=None)
    return float(fixed), float(per_sequence)


def cpu_overhead_fit(steps: pd.DataFrame) -> dict:
    """Host time the GPU waits for per iteration, from graph-replayed (decode) iterations, where the GPU
    span is the pure GPU time: least squares of (duration - gpu) = fixed + per_sequence x batch (s), plus
    medians of each host part over all iterations (ms)."""
    parts = {name: float(steps[name].median() * 1e3) for name in
             ("schedule_s", "prepare_s", "launch_s", "sync_s", "apply_s")}
    graph = steps[steps["path"] == "graph"]
    fit = {"fixed_s": float("nan"), "per_sequence_s": float("nan"), "iterations": len(graph)}
    exposed = (graph["duration_s"] - graph["gpu_s"]).to_numpy()
    line = host_time_line(graph["batch_size"].to_numpy(dtype=float), exposed)
    if line is not None:
        fit.update(fixed_s=line[0], per_sequence_s=line[1], median_exposed_ms=float(np.median(exposed) * 1e3))
    eager = steps[steps["path"] == "eager"]
    if len(eager):
        exposed = (eager["duration_s"] - eager["gpu_s"]).to_numpy()
        fit["eager_median_exposed_ms"] = float(np.median(exposed) * 1e3)
    return {"median_part_ms": parts, **fit}
