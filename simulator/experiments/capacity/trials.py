"""Capacity search against the simulator: each trial is one simulation of the resolved configuration at
one rate, judged against the search's SLOs."""
from __future__ import annotations

import dataclasses
import time

from simulator.experiments.capacity.journal import append_trial, read_trial_journal
from simulator.experiments.capacity.records import capacity_record
from simulator.experiments.capacity.search import (
    SearchConfig,
    SearchError,
    Trial,
    check_slos,
    search_capacity,
)
from simulator.slo import measured_requests


def native_rate_qps(cfg) -> float | None:
    """Requests per second of a trace replayed as recorded (rate_scale 1), over the requests a trial
    uses; None for synthetic arrivals."""

    from simulator.workload import load_workload

    if cfg.workload.arrival != "trace":
        return None
    workload = load_workload(dataclasses.replace(cfg.workload, rate_scale=1.0), cfg.seed)
    span_s = float(workload.arrived_s[-1] - workload.arrived_s[0])
    if len(workload) < 2 or span_s <= 0:
        raise SearchError(f"workload {workload.name}: its first {len(workload)} arrivals span no time; "
                          "a capacity search needs arrivals spread in time")
    return (len(workload) - 1) / span_s


def with_rate(cfg, rate_qps: float, num_requests: int, trace_rate_qps: float | None):
    """A copy of `cfg` (SimulationConfig) whose workload offers `rate_qps` with `num_requests` requests.

    Synthetic arrivals take the rate directly; a trace keeps its recorded arrival pattern, compressed
    or stretched (rate_scale) so its mean rate is `rate_qps`. This is the only place the search
    touches the workload config.
    """
    if cfg.workload.arrival == "trace":
        workload = dataclasses.replace(cfg.workload, rate_scale=rate_qps / trace_rate_qps, num_requests=num_requests)
    else:
        workload = dataclasses.replace(cfg.workload, rate_qps=rate_qps, num_requests=num_requests)
    return dataclasses.replace(cfg, workload=workload, output_dir="", progress=False)


def run_capacity_search(cfg, search: SearchConfig, progress: bool = True, capacity_run_dir=None,
                        trials_journal=None) -> dict:
    """Search the capacity of `cfg` (SimulationConfig or anything run_simulation accepts) and return
    the capacity.json record. With `capacity_run_dir`, the result files of the trial at capacity
    (requests, token times, iterations, summary; the Perfetto trace with `trace=true`) are written there
    for plotting. With `trials_journal` (a trials.jsonl path), each finished trial is appended there, and
    trials it already holds for the same inputs (simulator.provenance.point_fingerprint) are reused, not
    simulated again: an interrupted search resumes trial by trial.
    """
    from tqdm import tqdm

    from simulator import metrics
    from simulator.provenance import point_fingerprint
    from simulator.run import as_simulation_config, run_simulation

    started = time.perf_counter()
    cfg = as_simulation_config(cfg)
    cfg.cluster.validate(cfg.model)
    trace_rate = native_rate_qps(cfg)
    best = {}  # the highest passing trial's raw result, kept to write its files
    fingerprint = point_fingerprint(cfg, search) if trials_journal is not None else ""
    journaled = read_trial_journal(trials_journal, fingerprint) if trials_journal is not None else {}

    def evaluate(rate_qps: float) -> Trial:
        if rate_qps in journaled:
            return journaled[rate_qps]
        trial = simulate(rate_qps)
        if trials_journal is not None:
            append_trial(trials_journal, fingerprint, trial)
        return trial

    def simulate(rate_qps: float) -> Trial:
        result = run_simulation(with_rate(cfg, rate_qps, search.num_requests, trace_rate))
        # The SLOs read latencies only: the requests' columns serve, without per-request TBT or pandas.
        requests = metrics.request_latencies(result.records)
        measured = measured_requests(requests, search.warmup_fraction, search.cooldown_fraction)
        gaps = metrics.tbt_gaps_s(result.records, measured["request_id"])
        trial_values, violations = check_slos(measured, gaps, search)
        summary = result.summary
        trial_values.update({
            "throughput_rps": summary.get("throughput_rps"), "output_tokens_per_s": summary.get("output_tokens_per_s"),
            "preemptions": summary.get("preemptions"), "simulated_s": summary.get("simulated_s"),
            "mean_prompt_tokens": float(requests["prompt_tokens"].mean()),
            "mean_output_tokens": float(requests["output_tokens"].mean()),
        })
        feasible = not violations
        if feasible and rate_qps >= best.get("rate_qps", -1.0):
            best.update(rate_qps=rate_qps, result=result)
        return Trial(rate_qps=rate_qps, feasible=feasible, metrics=trial_values, violations=violations)

    bar = tqdm(desc=f"capacity {cfg.policy.name}", unit="trial", disable=not progress, leave=False)

    def on_trial(trial: Trial) -> None:
        bar.update(1)
        bar.set_postfix(rate=f"{trial.rate_qps:.3g}", met="yes" if trial.feasible else "no")

    try:
        outcome = search_capacity(evaluate, search, on_trial)
    finally:
        bar.close()  # also on Ctrl-C, so the message after it starts on a clean line
    at_capacity = outcome.capacity_trial
    if capacity_run_dir is not None and at_capacity and best.get("rate_qps") != at_capacity.rate_qps:
        simulate(at_capacity.rate_qps)  # that trial came from the journal: rerun it for its files
    if capacity_run_dir is not None and "result" in best:
        result = best["result"]
        metrics.write_outputs(capacity_run_dir, result.records, result.iteration_records, result.summary,
                              trace=cfg.trace)
    return capacity_record(cfg, search, outcome, time.perf_counter() - started)


