"""Fidelity: how close the simulator comes to real execution of the same configuration (servesim-compare).

    metrics.py  latency percentiles, signed errors, iterations replayed batch by batch, exposed host time
    runs.py     one executed run against its simulation (RunComparison)
    host.py     the engine profile's host terms as executions show them: measured, fitted, left one out
    report.py   the summary table, its Markdown tables and which targets hold
    cli.py      servesim-compare
"""
from simulator.experiments.compare.host import (
    HostSamples,
    fit_host_terms,
    held_out_host_terms,
    host_samples,
    host_terms,
    launch_floor_s,
    measured_cpu_overhead_s,
    measured_eager_floor_s,
    pooled_cpu_overhead,
)
from simulator.experiments.compare.metrics import (
    abs_error_stats,
    cpu_overhead_fit,
    iteration_kind,
    iteration_replay,
    latency_metrics,
    signed_error_pct,
    tbt_gaps_from_tokens,
)
from simulator.experiments.compare.report import (
    markdown_report,
    run_to_run_markdown,
    run_to_run_rows,
    summary_table,
    targets_summary,
)
from simulator.experiments.compare.runs import (
    PredictorCache,
    RunComparison,
    compare_run,
    find_runs,
    read_run,
    run_config,
)

__all__ = [
    "HostSamples", "PredictorCache", "RunComparison", "abs_error_stats", "compare_run", "cpu_overhead_fit",
    "find_runs", "fit_host_terms", "held_out_host_terms", "host_samples", "host_terms", "iteration_kind",
    "iteration_replay", "latency_metrics", "launch_floor_s", "markdown_report", "measured_cpu_overhead_s",
    "measured_eager_floor_s", "pooled_cpu_overhead", "read_run", "run_config", "run_to_run_markdown",
    "run_to_run_rows", "signed_error_pct", "summary_table", "targets_summary", "tbt_gaps_from_tokens",
]
