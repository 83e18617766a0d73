"""servesim-compare: metrics and errors on hand-made tables, and a golden end-to-end comparison."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from simulator.execute.loop import PredictorRunner
from simulator.execute.runner import StepTiming
from simulator.execute.serve import run_execution
from simulator.experiments import compare
from simulator.experiments.compare.cli import main as compare_main
from simulator.run import SimulationConfig, build_predictor

torch.set_num_threads(1)


def hand_tables():
    """Three requests; request 2 is rejected. Times in seconds."""
    requests = pd.DataFrame({
        "request_id": [0, 1, 2], "arrived_s": [0.0, 1.0, 2.0], "completed_s": [2.0, 5.0, np.nan],
        "ttft_s": [0.5, 1.0, np.nan], "e2e_s": [2.0, 4.0, np.nan], "output_tokens": [3, 2, 4],
        "rejected": [False, False, True],
    })
    token_times = pd.DataFrame({
        "request_id": [1, 0, 0, 1, 0],  # out of order on purpose
        "token_index": [0, 0, 1, 1, 2],
        "time_s": [2.0, 0.5, 0.7, 5.0, 2.0],
    })
    return requests, token_times


def test_tbt_gaps_and_latency_metrics_by_hand():
    requests, token_times = hand_tables()
    assert sorted(compare.tbt_gaps_from_tokens(token_times).round(6).tolist()) == [0.2, 1.3, 3.0]
    m = compare.latency_metrics(requests, token_times)
    assert m["completed"] == 2
    assert m["ttft_s_p50"] == pytest.approx(0.75) and m["ttft_s_p99"] == pytest.approx(0.995)
    assert m["e2e_s_p50"] == pytest.approx(3.0) and m["e2e_s_p90"] == pytest.approx(3.8)
    assert m["tbt_s_p50"] == pytest.approx(1.3)
    # Makespan 0 -> 5 s: 2 requests and 5 output tokens.
    assert m["throughput_rps"] == pytest.approx(0.4) and m["output_tokens_per_s"] == pytest.approx(1.0)


def test_errors_are_signed_relative_to_the_measurement():
    assert compare.signed_error_pct(1.1, 1.0) == pytest.approx(10.0)
    assert compare.signed_error_pct(0.5, 1.0) == pytest.approx(-50.0)
    assert np.isnan(compare.signed_error_pct(1.0, 0.0)) and np.isnan(compare.signed_error_pct(np.nan, 1.0))
    stats = compare.abs_error_stats(np.array([1.1, 0.8, 1.0, np.nan]), np.array([1.0, 1.0, 1.0, 1.0]))
    assert stats["n"] == 3
    assert stats["median_abs_pct"] == pytest.approx(10.0)
    assert stats["mean_signed_pct"] == pytest.approx((10 - 20 + 0) / 3)


def test_iteration_replay_feeds_each_batch_in_order():
    comp = pd.DataFrame({"iteration": [1, 0, 0, 2], "request_id": [5, 3, 4, 5],
                         "num_tokens": [1, 100, 1, 1], "kv_tokens": [100, 0, 7, 101]})
    seen = []

    def predict(q, kv):
        seen.append((q.tolist(), kv.tolist()))
        return float(q.sum() + kv.sum())

    assert compare.iteration_replay(comp, predict).tolist() == [108.0, 101.0, 102.0]
    assert seen[0] == ([100, 1], [0, 7])


def test_cpu_overhead_fit_recovers_fixed_and_per_sequence_cost():
    batch = np.array([1, 4, 8, 16, 32, 8])
    gpu = np.array([8e-3, 8.5e-3, 9e-3, 9.5e-3, 10e-3, 50e-3])
    exposed = 0.4e-3 + 0.02e-3 * batch
    steps = pd.DataFrame({"batch_size": batch, "gpu_s": gpu, "duration_s": gpu + exposed,
                          "path": ["graph"] * 5 + ["eager"], "schedule_s": 1e-4, "prepare_s": 2e-4,
                          "launch_s": 3e-4, "sync_s": 5e-3, "apply_s": 1e-4})
    fit = compare.cpu_overhead_fit(steps)
    assert fit["fixed_s"] == pytest.approx(0.4e-3) and fit["per_sequence_s"] == pytest.approx(0.02e-3)
    assert fit["iterations"] == 5
    assert fit["median_part_ms"]["prepare_s"] == pytest.approx(0.2)
    assert fit["eager_median_exposed_ms"] == pytest.approx((0.4e-3 + 0.16e-3) * 1e3)


class ScaledRunner(PredictorRunner):
    """Every iteration takes `factor` x the predictor's time, with a known GPU span (half of it)."""

    def __init__(self, predictor, factor):
        super().__init__(predictor)
        self.factor = factor

    def execute(self, ids, num_tokens, kv_tokens, *rest):
        seconds = float(self.predictor.stage_times_s(num_tokens, kv_tokens)[0]) * self.factor
        return StepTiming(path="graph" if num_tokens.max() == 1 else "eager", padded_batch=len(ids),
                          duration_s=seconds, gpu_s=seconds / 2)


def linear_config() -> SimulationConfig:
    return SimulationConfig.from_dict({
        "model": {"name": "tiny-cmp", "num_layers": 2, "hidden_size": 128, "num_q_heads": 4,
                  "num_kv_heads": 2, "head_dim": 32, "intermediate_size": 256, "vocab_size": 300,
                  "max_model_len": 2048},
        "hardware": "h100", "policy": {"name": "vllm"},
        "workload": {"trace": "data/traces/splitwise_conv.csv", "arrival": "poisson", "rate_qps": 30.0,
                     "lengths": "trace", "num_requests": 30, "max_prompt_tokens": 400,
                     "max_output_tokens": 40},
        "predictor": "linear",
        "linear_predictor": {"fixed_s": 0.01, "per_prefill_token_s": 1e-4, "per_decode_token_s": 5e-4,
                             "per_kv_token_s": 1e-6},
    })


def test_golden_an_execution_that_is_the_simulator_compares_with_zero_error(tmp_path):
    cfg = linear_config()
    run_execution(cfg, PredictorRunner(build_predictor(cfg)), tmp_path / "run")
    c = compare.compare_run(tmp_path / "run")
    for key, error in c.errors().items():
        assert error == pytest.approx(0.0, abs=1e-9), key
    assert c.iteration_errors()["total"]["median_abs_pct"] == pytest.approx(0.0, abs=1e-9)
    assert c.labels["policy"] == "vllm"


def test_known_iteration_and_latency_errors_when_the_gpu_is_twice_as_slow(tmp_path):
    cfg = linear_config()
    run_execution(cfg, ScaledRunner(build_predictor(cfg), 2.0), tmp_path / "slow")
    c = compare.compare_run(tmp_path / "slow")
    it = c.iteration_errors()
    assert it["total"]["median_abs_pct"] == pytest.approx(50.0, rel=1e-6)
    assert it["total"]["mean_signed_pct"] == pytest.approx(-50.0, rel=1e-6)
    assert it["gpu"]["mean_signed_pct"] == pytest.approx(0.0, abs=1e-6)  # GPU span = half = the predictor
    assert c.errors()["tbt_s_p50"] < -30  # the simulator is faster than this execution
    row = compare.summary_table([c]).iloc[0]
    report = compare.markdown_report(compare.summary_table([c]))
    assert "**50.0**" in report and row["iteration_total_n"] == len(c.iterations)


def test_cli_writes_tables_report_and_figures(tmp_path, capsys):
    cfg = linear_config()
    run_execution(cfg, ScaledRunner(build_predictor(cfg), 1.5), tmp_path / "runs" / "a")
    assert compare_main([str(tmp_path / "runs"), "--out", str(tmp_path / "cmp"), "--markdown",
                         str(tmp_path / "report.md"), "--figures", str(tmp_path / "fig"),
                         "--cpu-overhead", "measured"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    assert table["run"].tolist() == ["a"]
    assert "measured CPU overhead" in (tmp_path / "report.md").read_text()
    targets = json.loads((tmp_path / "cmp" / "targets.json").read_text())
    assert targets["runs"] == 1
    assert {p.name for p in (tmp_path / "fig").iterdir()} == {
        "fidelity_iterations.png", "fidelity_errors.png", "fidelity_cdf_splitwise_conv.png"}


def test_run_to_run_table_compares_two_executions_of_a_cell(tmp_path):
    cfg = linear_config()
    run_execution(cfg, ScaledRunner(build_predictor(cfg), 1.0), tmp_path / "runs" / "a")
    run_execution(cfg, ScaledRunner(build_predictor(cfg), 2.0), tmp_path / "again" / "a")
    comparisons = [compare.compare_run(tmp_path / "runs" / "a")]
    rows = compare.run_to_run_rows(comparisons, tmp_path / "again")
    assert len(rows) == 1 and rows[0]["run"] == "a"
    # The first execution is the simulator itself (scale 1): simulated == first, second is slower.
    assert rows[0]["e2e_s_p50_simulated"] == pytest.approx(rows[0]["e2e_s_p50_first"])
    assert rows[0]["e2e_s_p50_second"] > rows[0]["e2e_s_p50_first"]
    table = compare.run_to_run_markdown(rows)
    assert table.count("\n| a |") == 1
    assert compare.run_to_run_rows(comparisons, tmp_path / "runs" / "missing") == []


def test_missing_run_files_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="requests.parquet"):
        compare.read_run(tmp_path)


def test_host_terms_from_the_cli_options(tmp_path):
    cache = compare.PredictorCache()
    assert compare.host_terms("default", "default", [], cache)[0] is None  # the runs' own engine profiles
    host, setting = compare.host_terms("0.001", "none", [], cache)
    assert host == {"cpu_overhead_ms": 1.0, "cpu_overhead_per_sequence_ms": 0.0, "eager_launch_ms_per_layer": 0.0,
                    "piecewise_launch_ms_per_layer": 0.0}
    assert "no launch floors" in setting
    host, _ = compare.host_terms("vllm_v0", "0.0002", [], cache)
    assert host["cpu_overhead_per_sequence_ms"] > 0 and host["eager_launch_ms_per_layer"] == pytest.approx(0.2)
    host, _ = compare.host_terms("default", "none", [], cache)
    assert "cpu_overhead_ms" not in host and host["eager_launch_ms_per_layer"] == 0.0
    with pytest.raises(SystemExit, match="--eager-floor 'soon'"):
        compare.host_terms("default", "soon", [], cache)
    with pytest.raises(SystemExit, match="--cpu-overhead 'lots'"):
        compare.host_terms("lots", "default", [], cache)


def test_runs_recorded_before_engine_profiles_ran_servesim_execute():
    config = json.loads(json.dumps(dataclasses.asdict(linear_config())))
    old = {k: v for k, v in config.items() if k != "engine"}
    assert compare.run_config(old).engine.name == "servesim_execute"
    assert compare.run_config({**config, "engine": "vllm_v0"}).engine.name == "vllm_v0"


def test_held_out_host_terms_never_use_the_run_they_score():
    """Two runs with different exposed host times: each run's fitted CPU overhead is the other's."""
    def samples(fixed_s):
        batch = np.array([1.0, 2.0, 4.0, 8.0])
        eager = (np.array([0.02, 0.03]), np.array([0.001, 0.05]), np.array([0.015, 0.015]))
        empty = (np.empty(0),) * 3
        return compare.HostSamples(32, batch, fixed_s + 1e-5 * batch, {"eager": eager, "piecewise": empty})

    a, b = samples(0.3e-3), samples(0.5e-3)
    terms = compare.fit_host_terms([b])
    assert terms["cpu_overhead_ms"] == pytest.approx(0.5) and terms["cpu_overhead_per_sequence_ms"] == pytest.approx(0.01)
    # One eager iteration is predicted shorter than the median launch (15 ms): its 20 ms span is the floor.
    assert terms["eager_launch_ms_per_layer"] == pytest.approx(20.0 / 32)
    assert terms["piecewise_launch_ms_per_layer"] == 0.0  # no piecewise iterations: no floor measured
    assert compare.fit_host_terms([a])["cpu_overhead_ms"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="one layer count"):
        compare.fit_host_terms([a, compare.HostSamples(2, a.graph_batch, a.graph_exposed_s, a.launched)])


def test_pooled_cpu_overhead_over_runs(tmp_path):
    for name, fixed in (("a", 0.3e-3), ("b", 0.5e-3)):
        run = tmp_path / name
        run.mkdir()
        gpu = np.full(4, 8e-3)
        pd.DataFrame({"batch_size": [1, 2, 4, 8], "gpu_s": gpu, "duration_s": gpu + fixed,
                      "path": ["graph", "graph", "graph", "eager"], "launch_s": [1e-4, 1e-4, 1e-4, 0.015],
                      "schedule_s": 1e-4, "prepare_s": 2e-4, "sync_s": 8e-3, "apply_s": 1e-4}).to_parquet(
            run / "steps.parquet")
    cpu = compare.pooled_cpu_overhead([tmp_path / "a", tmp_path / "b"])
    assert cpu["graph_iterations"] == 6 and cpu["eager_iterations"] == 2
    assert cpu["decode_graph_exposed_ms"]["median"] == pytest.approx(0.4)
    assert cpu["eager_launch_ms"]["median"] == pytest.approx(15.0)


def test_golden_prefix_caching_run_reports_equal_hit_rates(tmp_path):
    """vLLM V1 with its prefix cache on the shipped Mooncake slice: an execution that is the simulator has
    the simulator's hit rate, and the report shows the prefix-cache table."""
    import dataclasses

    cfg = linear_config()
    workload = dataclasses.replace(cfg.workload, trace="data/validation/h100/fidelity_prefix/mooncake_slice.jsonl.gz",
                                   trace_format="mooncake", num_requests=20, max_prompt_tokens=1500)
    cfg = dataclasses.replace(cfg, workload=workload, policy=dataclasses.replace(cfg.policy, name="vllm_v1"))
    run_execution(cfg, PredictorRunner(build_predictor(cfg)), tmp_path / "run")
    c = compare.compare_run(tmp_path / "run")
    assert c.measured["prefix_hit_rate"] > 0.1
    assert c.measured["prefix_hit_rate"] == pytest.approx(c.simulated["prefix_hit_rate"])
    assert "Prefix cache hits" in compare.markdown_report(compare.summary_table([c]))
