"""Capacity search driving the real simulator on tiny workloads (linear roofline predictor: no profiles)."""
import dataclasses
import json

import numpy as np
import pytest

from simulator.experiments.capacity import (
    SearchError,
    native_rate_qps,
    run_capacity_search,
    search_config_from,
    with_rate,
    write_capacity_outputs,
)
from simulator.run import SimulationConfig, run_simulation
from simulator.slo import SLOConfig
from simulator.workload import load_workload

SLOS = [{"metric": "tbt_s", "percentile": 99, "max_s": 0.05}, {"metric": "ttft_s", "percentile": 90, "max_s": 0.5},
        {"metric": "queueing_delay_s", "percentile": 99, "max_s": 5.0}]


def tiny_config(policy="sarathi", **policy_params):
    return SimulationConfig.from_dict({
        "model": "llama-2-7b", "hardware": "h100", "predictor": "linear", "seed": 3,
        "workload": {"trace": None, "arrival": "poisson", "lengths": "uniform", "min_tokens": 256,
                     "max_tokens": 1024, "num_requests": 200},
        "policy": {"name": policy, **policy_params},
        "slo": {"name": "tiny", "slos": SLOS},
    })


def tiny_search(**overrides):
    return search_config_from({"num_requests": 200, "tolerance": 0.05, "initial_rate_qps": 4, **overrides}, SLOS)


@pytest.fixture(scope="module")
def sarathi_record():
    return run_capacity_search(tiny_config(chunk_size=256), tiny_search(), progress=False)


def test_search_is_deterministic_per_seed(sarathi_record):
    again = run_capacity_search(tiny_config(chunk_size=256), tiny_search(), progress=False)
    strip = lambda r: [(t["rate_qps"], t["feasible"], t["metrics"]) for t in r["trials"]]
    assert strip(again) == strip(sarathi_record)


def test_capacity_trial_passes_and_the_next_rate_fails(sarathi_record):
    record = sarathi_record
    assert record["status"] == "converged"
    capacity, failing = record["capacity_qps"], record["lowest_failing_qps"]
    assert 0 < capacity < failing <= capacity * 1.05
    by_rate = {t["rate_qps"]: t for t in record["trials"]}
    assert by_rate[capacity]["feasible"] and not by_rate[failing]["feasible"]
    # Every rate below the capacity that was tried passed; every rate above failed.
    assert all(t["feasible"] == (t["rate_qps"] <= capacity) for t in record["trials"])
    assert record["qps_per_gpu"] == capacity
    # $2.5/GPU-hour over the tokens served per hour at capacity.
    m = record["metrics_at_capacity"]
    tokens_per_hour = capacity * (m["mean_prompt_tokens"] + m["mean_output_tokens"]) * 3600
    assert record["cost_per_million_tokens_usd"] == pytest.approx(2.5 / tokens_per_hour * 1e6)


def test_trial_metrics_match_an_independent_run(sarathi_record):
    """Re-simulate the capacity rate directly and recompute P99 TBT over the measured window by hand."""
    cfg, search = tiny_config(chunk_size=256), tiny_search()
    rate = sarathi_record["capacity_qps"]
    result = run_simulation(with_rate(cfg, rate, search.num_requests, None))
    order = np.argsort(result.requests["arrived_s"].to_numpy(), kind="stable")
    kept = result.requests["request_id"].to_numpy()[order][20:180]  # 10% warm-up, 10% cool-down of 200
    records = result.records
    gaps = np.concatenate([np.diff(records.token_times_s[records.token_offsets[i]:records.token_offsets[i + 1]])
                           for i in kept])
    trial = next(t for t in sarathi_record["trials"] if t["rate_qps"] == rate)
    assert trial["metrics"]["tbt_s_p99"] == pytest.approx(np.percentile(gaps, 99))
    assert trial["metrics"]["num_measured"] == 160


def test_smaller_chunks_trade_capacity_for_tbt(sarathi_record):
    """Sarathi's knob: under a tight P99 TBT bound, a huge chunk stalls decodes and loses capacity."""
    # A bound between a 256-token chunk's iteration and a whole (up to ~800-token) prefill's.
    tight = [{"metric": "tbt_s", "percentile": 99, "max_s": 0.01}]
    small_chunks, whole_prefills = (
        run_capacity_search(dataclasses.replace(tiny_config(chunk_size=chunk), slo=SLOConfig("tight", tight)),
                            search_config_from({"num_requests": 200, "tolerance": 0.05}, tight), progress=False)
        for chunk in (256, 4096))
    assert small_chunks["capacity_qps"] > 2 * whole_prefills["capacity_qps"]


def test_trace_arrivals_are_rescaled_to_the_requested_rate():
    cfg = SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "h100", "predictor": "linear",
                                      "workload": {"trace": "data/traces/splitwise_conv.csv", "arrival": "trace",
                                                   "num_requests": 500}})
    native = native_rate_qps(cfg)
    scaled = with_rate(cfg, 12.5, 500, native)
    workload = load_workload(scaled.workload, scaled.seed)
    assert (len(workload) - 1) / (workload.arrived_s[-1] - workload.arrived_s[0]) == pytest.approx(12.5)
    original = load_workload(cfg.workload, cfg.seed)
    np.testing.assert_allclose(workload.arrived_s * 12.5 / native, original.arrived_s)  # same pattern


def test_capacity_outputs_and_bad_search_fields(tmp_path, sarathi_record):
    json_path, md_path = write_capacity_outputs(sarathi_record, tmp_path)
    loaded = json.loads(json_path.read_text())
    assert loaded["capacity_qps"] == sarathi_record["capacity_qps"]
    assert loaded["summary"]["chunk_size"] == 256 and loaded["summary"]["slo_name"] == "tiny"
    assert loaded["configuration"]["policy"]["name"] == "sarathi"
    assert "**capacity:" in md_path.read_text()
    with pytest.raises(SearchError, match="unknown search field"):
        search_config_from({"tolerence": 0.1}, SLOS)


def test_policy_defaults_fill_the_summary():
    record = run_capacity_search(tiny_config("orca"), tiny_search(max_trials=2), progress=False)
    assert record["summary"]["max_batch_size"] == 16  # Orca's own default batch cap
    assert record["summary"]["chunk_size"] is None
    assert record["status"] == "max_trials"


def test_writes_the_capacity_trials_files_for_plots(tmp_path):
    cfg = dataclasses.replace(tiny_config(chunk_size=256))
    run_capacity_search(cfg, tiny_search(max_trials=3), progress=False, capacity_run_dir=tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"requests.parquet", "token_times.parquet",
                                                              "iterations.parquet", "summary.json"}


def test_an_interrupted_search_resumes_trial_by_trial(tmp_path, monkeypatch, sarathi_record):
    import simulator.run

    journal = tmp_path / "trials.jsonl"
    real_run = simulator.run.run_simulation
    calls = []

    def interrupted_after_three(cfg, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the fourth trial
        calls.append(cfg)
        return real_run(cfg, *args, **kwargs)

    monkeypatch.setattr(simulator.run, "run_simulation", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_capacity_search(tiny_config(chunk_size=256), tiny_search(), progress=False, trials_journal=journal)
    assert len(journal.read_text().splitlines()) == 3

    def counted(cfg, *args, **kwargs):
        calls.append(cfg)
        return real_run(cfg, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(simulator.run, "run_simulation", counted)
    resumed = run_capacity_search(tiny_config(chunk_size=256), tiny_search(), progress=False, trials_journal=journal,
                                  capacity_run_dir=tmp_path / "run")
    strip = lambda r: [(t["rate_qps"], t["feasible"], t["metrics"]) for t in r["trials"]]
    assert strip(resumed) == strip(sarathi_record) and resumed["capacity_qps"] == sarathi_record["capacity_qps"]
    # Only the trials not journaled ran, plus the trial at capacity again if it came from the journal
    # (for capacity_run/'s files).
    journaled_rates = [t["rate_qps"] for t in sarathi_record["trials"][:3]]
    rerun_at_capacity = sarathi_record["capacity_qps"] in journaled_rates
    assert len(calls) == len(sarathi_record["trials"]) - 3 + rerun_at_capacity
    assert (tmp_path / "run" / "summary.json").exists()
    # Other inputs (a tighter TBT bound) never reuse those trials.
    calls.clear()
    search = tiny_search()
    tighter = dataclasses.replace(search, slos=[dataclasses.replace(s, max_s=s.max_s / 2) for s in search.slos])
    record = run_capacity_search(tiny_config(chunk_size=256), tighter, progress=False, trials_journal=journal)
    assert len(calls) == len(record["trials"])
