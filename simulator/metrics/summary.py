"""The run's summary: latency statistics, throughput, the JSON written to summary.json, the terminal
table and the notes that say what may make a run misleading."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from simulator.metrics.gaps import StreamedGaps, all_tbt_gaps
from simulator.metrics.records import (
    PERCENTILES,
    IterationRecords,
    RequestRecords,
    _round,
)
from simulator.metrics.tables import request_latencies

if TYPE_CHECKING:
    from simulator.metrics.records import RequestTable


# ----------------------------------------------------------------------------- summary


def latency_stats(values: np.ndarray, overwrite: bool = False) -> dict:
    """{mean, p50, p90, p99, max} of the finite values (linear-interpolated percentiles); None if none.

    overwrite=True lets it reorder `values` in place instead of copying them (for large arrays the
    caller no longer needs, such as every TBT gap).
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values, overwrite = values[finite], True  # a copy already: ours to reorder
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if len(values) == 0:
        return dict.fromkeys(keys)
    # The mean is taken first: np.percentile(overwrite_input=True) partitions values in place.
    numbers = [values.mean(), *np.percentile(values, PERCENTILES, overwrite_input=overwrite), values.max()]
    return {k: _round(v) for k, v in zip(keys, numbers)}


def summarize(records: RequestRecords, iters: IterationRecords | None, simulated_s: float, wall_s: float,
              latencies: RequestTable | None = None,
              tbt_gaps: np.ndarray | StreamedGaps | None = None) -> dict:
    """The run's headline numbers as a JSON-ready dict (floats rounded, NaN -> None).

    Latency blocks (ttft_s, tbt_s, tpot_s, e2e_s, normalized_e2e_s_per_token, queueing_delay_s)
    each hold {mean, p50, p90, p99, max} in seconds. Throughput is measured over the makespan, from
    the first arrival to the last completion: throughput_rps = completed / makespan_s and
    output_tokens_per_s = output tokens of completed requests / makespan_s. offered_rps is the
    arrival rate, (requests - 1) / (last arrival - first arrival). Iteration numbers count stage-0
    rows (each batch once, whatever the pipeline depth).

    A caller that already built `request_latencies(records)` or `all_tbt_gaps(records)` passes them
    (`latencies`, `tbt_gaps`; a request_table DataFrame or tbt_gaps_s' array will do too) to save building
    them again; an array of gaps is then reordered in place (its values stay).
    """
    table = request_latencies(records) if latencies is None else latencies
    gaps = all_tbt_gaps(records) if tbt_gaps is None else tbt_gaps
    rejected = np.asarray(table["rejected"], dtype=bool)
    completed_s = np.asarray(table["completed_s"], dtype=np.float64)
    completed = ~rejected & ~np.isnan(completed_s)
    arrived = np.asarray(table["arrived_s"], dtype=np.float64)
    n = len(arrived)

    reasons, reason_counts = np.unique(np.asarray(table["reject_reason"])[rejected].astype(str), return_counts=True)
    last_completion = completed_s[completed].max() if completed.any() else np.nan
    makespan_s = last_completion - arrived.min() if completed.any() else np.nan
    output_tokens_done = int(np.asarray(table["output_tokens"])[completed].sum())
    arrival_span_s = arrived.max() - arrived.min() if n else 0.0
    preemptions = np.asarray(table["preemptions"])
    # Tables written before prefix caching existed have no cached_tokens column: nothing was cached.
    cached = np.asarray(table["cached_tokens"])[~rejected] if "cached_tokens" in table else np.zeros(0)
    prompt_total = int(np.asarray(table["prompt_tokens"])[~rejected].sum())

    summary = {
        "num_requests": n,
        "completed": int(completed.sum()),
        "unfinished": int((~rejected & ~completed).sum()),
        "rejected": int(rejected.sum()),
        "rejected_by_reason": {str(r): int(c) for r, c in zip(reasons, reason_counts)},
        "ttft_s": latency_stats(table["ttft_s"]),
        "tbt_s": gaps.stats() if isinstance(gaps, StreamedGaps) else latency_stats(gaps, overwrite=True),
        "tpot_s": latency_stats(table["tpot_s"]),
        "e2e_s": latency_stats(table["e2e_s"]),
        "normalized_e2e_s_per_token": latency_stats(table["normalized_e2e_s_per_token"]),
        "queueing_delay_s": latency_stats(table["queueing_delay_s"]),
        "makespan_s": _round(makespan_s),
        "throughput_rps": _round(completed.sum() / makespan_s) if makespan_s > 0 else None,
        "output_tokens_per_s": _round(output_tokens_done / makespan_s) if makespan_s > 0 else None,
        "offered_rps": _round((n - 1) / arrival_span_s) if arrival_span_s > 0 else None,
        "output_tokens_completed": output_tokens_done,
        "preemptions": int(preemptions.sum()),
        "requests_preempted": int((preemptions > 0).sum()),
        # Block counts and evictions are added by the caches (simulator/result.py).
        "prefix_cache": {"cached_tokens": int(cached.sum()),
                         "hit_rate_tokens": _round(cached.sum() / prompt_total) if prompt_total else 0.0},
        "simulated_s": _round(simulated_s),
        "wall_s": _round(wall_s),
    }
    summary.update(_iteration_summary(iters))
    return summary


def _iteration_summary(iters: IterationRecords | None) -> dict:
    if iters is None or len(iters.start_s) == 0:
        return {"num_iterations": 0, "batch_size_mean": None, "batch_size_max": None,
                "iteration_s": latency_stats(np.empty(0))}
    first_stage = np.asarray(iters.stage) == 0
    batch = np.asarray(iters.batch_size)
    batch = batch if first_stage.all() else batch[first_stage]  # (no copy of tens of millions of rows)
    return {
        "num_iterations": int(first_stage.sum()),
        "batch_size_mean": _round(batch.mean()) if len(batch) else None,
        "batch_size_max": int(batch.max()) if len(batch) else None,
        # Boolean indexing copies: the copy is ours to reorder.
        "iteration_s": latency_stats(np.asarray(iters.duration_s)[first_stage], overwrite=True),
    }


def prefix_cache_counts(caches) -> dict:
    """The block counts every KV cache keeps (lookup_blocks, hit_blocks, evictions), summed over `caches`."""
    caches = list(caches)
    return {name: sum(getattr(kv, name) for kv in caches) for name in ("lookup_blocks", "hit_blocks", "evictions")}


def add_prefix_cache_counts(summary: dict, counts: dict | None) -> None:
    """Add a cluster's prefix_cache_counts to the summary's prefix_cache block, with the block hit rate."""
    if not counts:
        return
    lookups = counts["lookup_blocks"]
    summary["prefix_cache"] |= counts | {"hit_rate_blocks": round(counts["hit_blocks"] / lookups, 7)
                                         if lookups else 0.0}


def summary_json(summary: dict) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, no NaN (they are null already)."""
    return json.dumps(summary, sort_keys=True, indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------- terminal


def _prefix_cache_line(prefix_cache: dict) -> list[str]:
    """The summary's prefix-cache line, or none when nothing was cached (no cache, or no shared prefix)."""
    if not prefix_cache.get("cached_tokens") and not prefix_cache.get("evictions"):
        return []
    return [(f"prefix cache {prefix_cache['cached_tokens']:,} prompt tokens cached "
             f"({100 * (prefix_cache.get('hit_rate_tokens') or 0):.1f} %), "
             f"{prefix_cache.get('evictions', 0):,} blocks evicted")]


def format_summary(summary: dict) -> str:
    """A multi-line, human-readable table of `summary` for the terminal (times in ms, E2E in s)."""
    def number(x, scale=1.0, digits=1):
        return "-" if x is None else f"{x * scale:,.{digits}f}"

    rejected = summary["rejected"]
    # wall_s counts building the predictor too: a first run's fit of the runtime model is not simulation.
    build_s = summary.get("predictor_build_s") or 0.0
    simulation_wall_s = None if summary["wall_s"] is None else summary["wall_s"] - build_s
    reasons = ", ".join(f"{c:,}: {r}" for r, c in sorted(summary["rejected_by_reason"].items()))
    lines = [
        (f"requests    {summary['num_requests']:,} arrived, {summary['completed']:,} completed, "
         f"{summary['unfinished']:,} unfinished, {rejected:,} rejected" + (f" ({reasons})" if reasons else "")),
        (f"throughput  {number(summary['throughput_rps'], digits=3)} req/s, "
         f"{number(summary['output_tokens_per_s'])} output tokens/s "
         f"(offered {number(summary['offered_rps'], digits=3)} req/s)"),
        f"preemptions {summary['preemptions']:,} ({summary['requests_preempted']:,} requests)",
        *_prefix_cache_line(summary.get("prefix_cache") or {}),
        (f"iterations  {summary['num_iterations']:,}, mean batch {number(summary['batch_size_mean'])}, "
         f"max batch {summary['batch_size_max'] if summary['batch_size_max'] is not None else '-'}"),
        f"time        {number(summary['simulated_s'])} s simulated in {number(simulation_wall_s, digits=2)} s"
        + (f" (+ {build_s:,.2f} s to fit or load the runtime model)" if build_s >= 0.01 else ""),
        "",
        f"{'latency':<22}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    rows = [("TTFT (ms)", "ttft_s", 1e3), ("TBT (ms)", "tbt_s", 1e3), ("TPOT (ms)", "tpot_s", 1e3),
            ("queueing delay (ms)", "queueing_delay_s", 1e3), ("E2E (s)", "e2e_s", 1.0),
            ("E2E per token (ms)", "normalized_e2e_s_per_token", 1e3), ("iteration (ms)", "iteration_s", 1e3)]
    for label, key, scale in rows:
        stats = summary[key]
        cells = "".join(f"{number(stats[k], scale, 2 if scale == 1.0 else 1):>10}"
                        for k in ("mean", "p50", "p90", "p99", "max"))
        lines.append(f"{label:<22}{cells}")
    return "\n".join(lines)


# A queue that grows for the whole run is overload, not a burst: its longest wait is a sizeable share of
# the time over which requests arrived.
OVERLOAD_QUEUEING_SHARE = 0.1
OVERLOAD_MIN_QUEUEING_S = 1.0
# Rejections worth a note: the default run rejects 1 of 19,366 requests, which changes nothing.
REJECTED_SHARE_NOTED = 0.01


def load_notes(summary: dict) -> list[str]:
    """Why a run may not show what it was meant to, one line each (empty when nothing stands out):
    requests rejected before running (1 % or more of them), and an offered rate above what the cluster
    served (its queue grew through the run, so every latency includes a growing wait)."""
    notes = []
    n, rejected = summary["num_requests"], summary["rejected"]
    if rejected >= REJECTED_SHARE_NOTED * n:
        notes.append(f"{rejected:,} of {n:,} requests ({rejected / n:.1%}) were rejected and are left out of every "
                     f"latency; workload.max_prompt_tokens / workload.max_output_tokens clip long requests instead")
    offered, served = summary.get("offered_rps"), summary.get("throughput_rps")
    longest_wait_s = summary["queueing_delay_s"]["max"]
    if offered and served and longest_wait_s is not None and n > 1:
        arrival_span_s = (n - 1) / offered
        if longest_wait_s > max(OVERLOAD_QUEUEING_SHARE * arrival_span_s, OVERLOAD_MIN_QUEUEING_S):
            notes.append(f"overloaded: requests arrived at {offered:.3g} req/s but were served at {served:.3g} req/s, "
                         f"so the queue grew (longest wait {longest_wait_s:,.1f} s); lower workload.rate_scale "
                         f"(trace replay) or workload.rate_qps, or add replicas. servesim-capacity finds the "
                         f"highest rate that meets the SLOs")
    return notes
