"""servesim-compare: how close the simulator comes to real execution of the same configuration.

For every run directory written by servesim-execute (config.json, requests/token_times/steps/
compositions parquet) it simulates the very same config (same trace slice, rate, policy, KV size, seed)
and compares:
  latency     median, P90, P99 of TTFT, TBT (every inter-token gap) and end-to-end latency
  throughput  completed requests and output tokens per second over the makespan
  iterations  matched one to one: each executed batch (its exact composition) is replayed through the
              runtime model; predicted vs measured iteration time (with the engine profile's host terms)
              and predicted GPU time (no host terms) vs the measured GPU span
The simulator prices iterations as the run's engine ran them (config.json's `engine`; runs recorded
before engine profiles existed ran servesim_execute). With --held-out the host terms (CPU overhead per
iteration, launch floors) are fitted on the other runs only (leave one run out), so the table is out of
sample.
Errors are signed, (simulated - measured) / measured in %; "abs" columns are their magnitudes.

    servesim-compare data/validation/h100/fidelity/runs --markdown docs/fidelity_results.md \\
        --figures docs/figures/fidelity --out results/fidelity
    # + how far two executions of the same cells are from each other (run-to-run table):
    servesim-compare data/validation/h100/fidelity/runs --repeats data/validation/h100/fidelity/repeat/runs \\
        --markdown docs/fidelity_results/default.md
    servesim-compare data/validation/h100/fidelity/piecewise/runs --held-out \\
        --markdown docs/fidelity_results/piecewise.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.experiments.compare.host import (
    fit_host_terms,
    held_out_host_terms,
    host_samples,
    host_terms,
    launch_floor_s,
    pooled_cpu_overhead,
)
from simulator.experiments.compare.report import (
    markdown_report,
    run_to_run_markdown,
    run_to_run_rows,
    summary_table,
    targets_summary,
)
from simulator.experiments.compare.runs import PredictorCache, compare_run, find_runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="servesim-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path,
                        help="servesim-execute run directories, or folders holding them")
    parser.add_argument("--out", type=Path, help="write summary.csv, iterations.parquet, targets.json here")
    parser.add_argument("--markdown", type=Path, help="write the accuracy tables (Markdown) here")
    parser.add_argument("--figures", type=Path, help="write the fidelity figures (PNG) here")
    parser.add_argument("--cpu-overhead", default="default",
                        help="CPU overhead per iteration the simulator uses: 'default' (the engine profile's, "
                             "as in the runs' configs), 'measured' (the median the executions show on decode "
                             "iterations), 'vllm_v0' (Vidur's vLLM v0 line), or seconds")
    parser.add_argument("--repeats", type=Path,
                        help="a folder of second executions of some of the same cells (same run names): adds "
                             "a run-to-run table to the Markdown report")
    parser.add_argument("--held-out", action="store_true",
                        help="fit the host terms (CPU overhead, launch floors) of each run on the other runs "
                             "(leave one run out) instead of taking the engine profile's")
    parser.add_argument("--eager-floor", default="default",
                        help="least GPU time of a batch launched op by op (one with prefill tokens): "
                             "'default' (the runtime model's, 0.4885 ms per layer), 'measured' (from these "
                             "runs), 'none', or seconds per layer")
    args = parser.parse_args(argv)

    runs = find_runs(args.runs)
    if not runs:
        raise SystemExit(f"no servesim-execute runs (config.json + steps.parquet) under "
                         f"{[str(r) for r in args.runs]}")
    predictors = PredictorCache()
    if args.held_out:
        per_run = held_out_host_terms(runs, predictors)
        setting = ("host terms (CPU overhead, launch floors) fitted for each run on the other runs "
                   "(leave one run out; simulator.experiments.compare.fit_host_terms)")
    else:
        host, setting = host_terms(args.cpu_overhead, args.eager_floor, runs, predictors)
        per_run = dict.fromkeys(runs, host)
    print(f"simulating with {setting}")
    comparisons = []
    for run_dir in runs:
        comparisons.append(compare_run(run_dir, predictors, per_run[run_dir]))
        e = comparisons[-1].errors()
        it = comparisons[-1].iteration_errors()["total"]
        print(f"{run_dir.name}: TTFT p50 {e['ttft_s_p50']:+.1f} %, TBT p99 {e['tbt_s_p99']:+.1f} %, "
              f"E2E p50 {e['e2e_s_p50']:+.1f} %, iteration median |err| {it['median_abs_pct']:.1f} %",
              flush=True)
    table = summary_table(comparisons)
    order = {"conversation": 0, "arxiv": 1}
    table = table.assign(_o=table["trace"].map(order).fillna(2)).sort_values(
        ["_o", "trace", "policy", "load"], kind="stable").drop(columns="_o")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "summary.csv", index=False)
        pd.concat([c.iterations.assign(run=c.name) for c in comparisons]).to_parquet(
            args.out / "iterations.parquet", index=False)
        targets = {"cpu_overhead": setting, **targets_summary(table)}
        (args.out / "targets.json").write_text(json.dumps(targets, indent=2) + "\n")
        if (np.asarray([s["gpu_s"].notna().any() for s in (c.iterations for c in comparisons)])).all():
            samples = [host_samples(r, predictors) for r in runs]
            cpu = pooled_cpu_overhead(runs, launch_floor_s(samples, "eager"))
            try:  # what an engine profile of these runs would hold (fitted on all of them)
                cpu["engine_host_terms"] = fit_host_terms(samples)
            except ValueError as e:
                cpu["engine_host_terms"] = f"not fitted: {e}"
            if args.held_out:
                cpu["held_out_host_terms"] = {r.name: terms for r, terms in per_run.items()}
            (args.out / "cpu_overhead.json").write_text(json.dumps(cpu, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        report = markdown_report(table)
        if args.repeats:
            report += "\n" + run_to_run_markdown(run_to_run_rows(comparisons, args.repeats))
        args.markdown.write_text(f"Simulated with {setting}. Generated by `servesim-compare` "
                                 f"(simulator/experiments/compare/).\n\n" + report)
    if args.figures:
        from plots.fidelity import write_fidelity_figures

        for path in write_fidelity_figures(comparisons, args.figures):
            print(f"wrote {path}")
    print(json.dumps(targets_summary(table)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
