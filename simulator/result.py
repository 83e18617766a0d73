"""A finished simulation's outcome, whatever its cluster kind: the summary (with the SLO verdicts), the
records, the tables built from them, and the result files.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulator.slo import evaluate_slos

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SimulationResult:
    """One run's outcome: the summary dict, the raw records, and per-request and per-iteration tables.

    The tables are built from the records when first read: the per-request table's TBT columns sort
    every token gap (about 0.25 s per 4 million tokens), which a run that only needs its summary skips.
    """

    summary: dict
    records: Any  # simulator.metrics.RequestRecords
    iteration_records: Any  # simulator.metrics.IterationRecords

    @functools.cached_property
    def requests(self) -> pd.DataFrame:
        """simulator.metrics.request_table of the records."""
        from simulator import metrics

        return metrics.request_table(self.records)

    @functools.cached_property
    def iterations(self) -> pd.DataFrame:
        """simulator.metrics.iteration_table of the iteration records."""
        from simulator import metrics

        return metrics.iteration_table(self.iteration_records)


def build_result(cfg, out, setup: dict, wall_s: float, out_dir, extra_summary: dict | None = None) -> SimulationResult:
    """Tables, summary (setup, any extra sections, SLO verdicts) and result files of a finished simulation.

    `out` is what the cluster's simulate() returned (records, iterations, simulated_s); files go to
    `out_dir`, else cfg.output_dir when set.
    """
    from simulator import metrics

    # One latency table and one pass over the token gaps serve both the summary and the SLO verdicts (the
    # SLOs read latencies and percentiles only, so neither the per-request TBT columns nor the gaps' order
    # matter to them).
    latencies = metrics.request_latencies(out.records)
    tbt_gaps_s = metrics.all_tbt_gaps(out.records)  # streamed when there are too many to copy
    summary = metrics.summarize(out.records, out.iterations, out.simulated_s, wall_s,
                                latencies=latencies, tbt_gaps=tbt_gaps_s)
    summary["setup"] = setup
    # the caches' own counts, where the cluster kind has them
    metrics.add_prefix_cache_counts(summary, getattr(out, "prefix_cache", None))
    summary.update(extra_summary or {})
    summary["slo"] = evaluate_slos(cfg.slo, latencies, tbt_gaps_s)
    destination = out_dir if out_dir is not None else (cfg.output_dir or None)
    if destination is not None:
        metrics.write_outputs(destination, out.records, out.iterations, summary, trace=cfg.trace)
    return SimulationResult(summary, out.records, out.iterations)
