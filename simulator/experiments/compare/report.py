"""The fidelity report: the summary table of compared runs, its Markdown tables (latency, iterations,
host time, run to run) and which targets hold."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulator.experiments.compare.metrics import (
    ITERATION_TARGET_PCT,
    LATENCY_TARGET_PCT,
    TARGET_METRICS,
    latency_metrics,
    signed_error_pct,
)
from simulator.experiments.compare.runs import RunComparison, find_runs, read_run


def summary_table(comparisons: list[RunComparison]) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in comparisons])


def _pct(x) -> str:
    return "-" if not np.isfinite(x) else f"{x:+.1f}"


def _abs(x) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1f}"


def _ms(x) -> str:
    return "-" if not np.isfinite(x) else f"{x * 1e3:.0f}"


LATENCY_INTRO = (
    "Signed error (simulated - measured) / measured in %. Targets: |error| <= {target:g} % for median TTFT, "
    "P99 TBT and median E2E (bold where missed). Measured values in ms (E2E in s).")
LATENCY_HEADER = ("| run | load | rate req/s | reqs | TTFT p50 ms | err p50 | err p90 | err p99 | "
                  "TBT p99 ms | err p50 | err p90 | err p99 | E2E p50 s | err p50 | err p90 | err p99 | "
                  "err req/s | err tok/s |")
ITERATION_INTRO = (
    "Each executed batch replayed through the runtime model. total: predicted (with its CPU-overhead term) "
    "vs the measured iteration (scheduling to tokens applied). GPU: predicted without CPU term vs the "
    "CUDA-event span of the forward pass and sampling. Target: median |error| <= {target:g} % (total).")
ITERATION_HEADER = ("| run | iterations | graph share | total median abs % | total P90 abs % | "
                    "total mean signed % | prefill | decode | mixed | GPU median abs % | GPU mean signed % |")
CPU_INTRO = (
    "Medians per iteration (ms) of each host part; exposed = iteration time minus GPU span. The fit is "
    "exposed = fixed + per-sequence x batch over decode iterations replayed from CUDA graphs.")
CPU_HEADER = ("| run | schedule | prepare | launch | sync wait | apply | decode fit fixed ms | per seq ms | "
              "eager exposed median ms |")


def markdown_report(table: pd.DataFrame) -> str:
    """The accuracy tables (Markdown) from summary_table's rows."""
    lines = ["## Latency and throughput: simulated vs measured", "",
             LATENCY_INTRO.format(target=LATENCY_TARGET_PCT), "", LATENCY_HEADER, "|---" * 18 + "|"]

    def flag(row, key):
        text = _pct(row[f"error_pct_{key}"])
        if key in TARGET_METRICS and np.isfinite(row[f"error_pct_{key}"]) and \
                abs(row[f"error_pct_{key}"]) > LATENCY_TARGET_PCT:
            return f"**{text}**"
        return text

    for _, r in table.iterrows():
        lines.append(
            f"| {r['run']} | {_load(r['load'])} | {_abs(r['rate_qps'])} | {int(r['measured_completed'])} | "
            f"{_ms(r['measured_ttft_s_p50'])} | {flag(r, 'ttft_s_p50')} | {flag(r, 'ttft_s_p90')} | "
            f"{flag(r, 'ttft_s_p99')} | {_ms(r['measured_tbt_s_p99'])} | {flag(r, 'tbt_s_p50')} | "
            f"{flag(r, 'tbt_s_p90')} | {flag(r, 'tbt_s_p99')} | {r['measured_e2e_s_p50']:.2f} | "
            f"{flag(r, 'e2e_s_p50')} | {flag(r, 'e2e_s_p90')} | {flag(r, 'e2e_s_p99')} | "
            f"{flag(r, 'throughput_rps')} | {flag(r, 'output_tokens_per_s')} |")
    lines += ["", "## Iteration time, matched batch by batch", "",
              ITERATION_INTRO.format(target=ITERATION_TARGET_PCT), "", ITERATION_HEADER, "|---" * 11 + "|"]
    for _, r in table.iterrows():
        median = r["iteration_total_median_abs_pct"]
        missed = np.isfinite(median) and median > ITERATION_TARGET_PCT
        cell = f"**{_abs(median)}**" if missed else _abs(median)
        graph_share = r["cpu_graph_iterations"] / max(r["iteration_total_n"], 1)
        lines.append(
            f"| {r['run']} | {int(r['iteration_total_n'])} | {graph_share:.0%} | {cell} | "
            f"{_abs(r['iteration_total_p90_abs_pct'])} | {_pct(r['iteration_total_mean_signed_pct'])} | "
            f"{_abs(r.get('iteration_total_prefill_median_abs_pct', np.nan))} | "
            f"{_abs(r.get('iteration_total_decode_median_abs_pct', np.nan))} | "
            f"{_abs(r.get('iteration_total_mixed_median_abs_pct', np.nan))} | "
            f"{_abs(r['iteration_gpu_median_abs_pct'])} | {_pct(r['iteration_gpu_mean_signed_pct'])} |")
    lines += _prefix_cache_lines(table)
    lines += ["", "## Measured CPU overhead of the real execution", "", CPU_INTRO, "", CPU_HEADER,
              "|---" * 9 + "|"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['run']} | {r['cpu_median_schedule_ms']:.3f} | {r['cpu_median_prepare_ms']:.3f} | "
            f"{r['cpu_median_launch_ms']:.3f} | {r['cpu_median_sync_ms']:.2f} | "
            f"{r['cpu_median_apply_ms']:.3f} | "
            f"{_num(r['cpu_fixed_ms'], 3)} | {_num(r['cpu_per_sequence_ms'], 4)} | "
            f"{_num(r['cpu_eager_median_exposed_ms'], 2)} |")
    return "\n".join(lines) + "\n"


PREFIX_INTRO = (
    "Share of the completed requests' prompt tokens served from the prefix cache: the same policy and cache "
    "decide hits in both, so they differ only where timing changes which requests run together.")


def _prefix_cache_lines(table: pd.DataFrame) -> list[str]:
    """The prefix-cache table, for runs whose policy cached anything (none: no lines)."""
    if "measured_prefix_hit_rate" not in table or not (table["measured_prefix_hit_rate"].fillna(0) > 0).any():
        return []
    lines = ["", "## Prefix cache hits: simulated vs measured", "", PREFIX_INTRO, "",
             "| run | measured hit rate | simulated hit rate |", "|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['run']} | {r['measured_prefix_hit_rate']:.1%} | {r['simulated_prefix_hit_rate']:.1%} |")
    return lines


RUN_TO_RUN_INTRO = (
    "The same cell (config, trace slice, arrivals) executed twice on the GPU. second vs first: "
    "(second - first) / first in %, how far the measurement itself moves between runs. Then the simulator's "
    "signed error against each run.")
RUN_TO_RUN_HEADER = ("| run | TTFT p50 ms first / second | second vs first | sim vs first / second | "
                     "TBT p99 ms first / second | second vs first | sim vs first / second | "
                     "E2E p50 s first / second | second vs first | sim vs first / second |")


def run_to_run_rows(comparisons: list[RunComparison], repeat_root: Path) -> list[dict]:
    """For every compared run with a repeat of the same name under repeat_root: the target metrics of both
    executions and the simulation."""
    repeats = {d.name: d for d in find_runs([repeat_root])}
    rows = []
    for c in comparisons:
        if c.name not in repeats:
            continue
        repeat = read_run(repeats[c.name])
        second = latency_metrics(repeat["requests"], repeat["token_times"])
        rows.append({"run": c.name, **{f"{key}_{which}": values[key] for key in TARGET_METRICS
                                       for which, values in (("first", c.measured), ("second", second),
                                                             ("simulated", c.simulated))}})
    return rows


def run_to_run_markdown(rows: list[dict]) -> str:
    lines = ["## Run to run", "", RUN_TO_RUN_INTRO, "", RUN_TO_RUN_HEADER, "|---" * 10 + "|"]
    for r in rows:
        cells = [r["run"]]
        for key, scale, digits in (("ttft_s_p50", 1e3, 0), ("tbt_s_p99", 1e3, 0), ("e2e_s_p50", 1.0, 2)):
            first, second, sim = r[f"{key}_first"], r[f"{key}_second"], r[f"{key}_simulated"]
            cells += [f"{first * scale:.{digits}f} / {second * scale:.{digits}f}",
                      _pct(signed_error_pct(second, first)),
                      f"{_pct(signed_error_pct(sim, first))} / {_pct(signed_error_pct(sim, second))}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _load(x) -> str:
    return "-" if not np.isfinite(x) else f"{x:.0%}"


def _num(x, digits) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def targets_summary(table: pd.DataFrame) -> dict:
    """Which targets hold in how many runs (loads <= 85 %)."""
    within = table[table["load"].fillna(0) <= 0.85 + 1e-9]
    out = {"runs": len(within)}
    for key in TARGET_METRICS:
        errors = within[f"error_pct_{key}"].abs()
        out[f"{key}_within_{LATENCY_TARGET_PCT:g}pct"] = int((errors <= LATENCY_TARGET_PCT).sum())
    out[f"iteration_median_within_{ITERATION_TARGET_PCT:g}pct"] = int(
        (within["iteration_total_median_abs_pct"] <= ITERATION_TARGET_PCT).sum())
    return out
