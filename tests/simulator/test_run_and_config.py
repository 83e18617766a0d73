"""run_simulation from configs, determinism, Hydra composition, config errors naming the field, the CLI."""
import json
import subprocess
import sys

import pytest

from simulator.config import ConfigError
from simulator.metrics import iteration_table, request_table
from simulator.paths import CONF_DIR, REPO_ROOT
from simulator.run import SimulationConfig, run_simulation

SMALL_WORKLOAD = {"trace": None, "arrival": "poisson", "rate_qps": 6.0, "lengths": "uniform",
                  "min_tokens": 64, "max_tokens": 2048, "num_requests": 150}


def small_config(**overrides):
    values = {"model": "llama-2-7b", "hardware": "h100", "predictor": "linear", "workload": SMALL_WORKLOAD,
              "policy": {"name": "sarathi", "chunk_size": 256}} | overrides
    return SimulationConfig.from_dict(values)


def without_wall(summary):
    return {k: v for k, v in summary.items() if k not in ("wall_s", "predictor_build_s")}


def test_same_config_and_seed_give_identical_results(tmp_path):
    a = run_simulation(small_config(), out_dir=tmp_path / "a")
    b = run_simulation(small_config(), out_dir=tmp_path / "b")
    assert without_wall(a.summary) == without_wall(b.summary)
    assert a.requests.equals(b.requests) and a.iterations.equals(b.iterations)
    files = [json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab"]
    assert without_wall(files[0]) == without_wall(files[1])
    for name in ("requests.parquet", "iterations.parquet", "token_times.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    traced = [run_simulation(small_config(trace=True), out_dir=tmp_path / d) for d in ("ta", "tb")]
    assert traced[0].summary["num_iterations"] == a.summary["num_iterations"]
    assert (tmp_path / "ta" / "trace.json").read_bytes() == (tmp_path / "tb" / "trace.json").read_bytes()
    c = run_simulation(small_config(seed=1))
    assert without_wall(c.summary) != without_wall(a.summary)


def test_summary_reports_setup_and_slo_verdicts():
    impossible = {"name": "t", "slos": [{"metric": "ttft_s", "percentile": 90, "max_s": 1e-6}]}
    result = run_simulation(small_config(slo=impossible))
    s = result.summary
    assert s["completed"] == 150 and s["rejected"] == 0
    assert s["setup"]["policy"] == "sarathi" and s["setup"]["kv_blocks_per_engine"] == 7313
    assert s["slo"]["all_met"] is False and s["slo"]["objectives"][0]["name"] == "p90_ttft_s<=1e-06"
    assert len(result.requests) == 150
    assert result.iterations["num_prefill_tokens"].sum() == result.requests["prompt_tokens"].sum()
    # The tables are built from the records when first read, then kept.
    assert result.requests.equals(request_table(result.records)) and result.requests is result.requests
    assert result.iterations.equals(iteration_table(result.iteration_records))


@pytest.mark.parametrize("values, field", [
    ({"policy": {"name": "nope"}}, "policy.name"),
    ({"policy": {"name": "orca", "chunk_size": 64}}, "policy.chunk_size"),
    ({"cluster": {"tp": 3}}, "cluster.tp=3"),
    ({"cluster": {"pp": 5}}, "cluster.pp=5"),
    ({"cluster": {"router": "fastest"}}, "cluster.router"),
    ({"cluster": {"router_load_weight": -0.5}}, "cluster.router_load_weight"),
    ({"predictor": "magic"}, "predictor"),
    ({"policy": {"name": "vllm", "max_num_batched_tokens": 1024}}, "policy.max_num_batched_tokens"),
    ({"cluster": {"num_replicas": 0}}, "cluster.num_replicas"),
])
def test_bad_values_stop_with_the_field_named(values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        run_simulation(small_config(**values))


def test_unknown_field_in_a_group_is_named():
    with pytest.raises(ConfigError, match="chunk"):
        SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "h100", "cluster": {"chunk": 1}})


def test_hydra_composes_groups_and_overrides():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from simulator.cli import APP_CONFIG_NAME, config_from_hydra, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = config_from_hydra(compose(APP_CONFIG_NAME, ["policy=sarathi", "policy.chunk_size=512",
                                                          "model=mistral-7b", "cluster=tp2"]))
        default = config_from_hydra(compose(APP_CONFIG_NAME))
        with pytest.raises(Exception, match="chunk_size"):
            compose(APP_CONFIG_NAME, ["policy.chunk_size=abc"])
    assert cfg.policy.name == "sarathi" and cfg.policy.chunk_size == 512 and cfg.policy.max_batch_size == 128
    assert cfg.model.name == "mistral-7b" and cfg.model.num_kv_heads == 8 and cfg.cluster.tp == 2
    assert default.model.name == "llama-3-8b" and default.hardware.name == "h100"
    assert default.policy.name == "sarathi" and default.workload.trace.endswith("splitwise_conv.csv")
    assert default.predictor == "fitted" and default.fast_decode_runs
    assert default.engine.name == "vllm_v1" and cfg.engine.name == "vllm_v1"


def test_hydra_engine_group_and_field_overrides():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from simulator.cli import APP_CONFIG_NAME, config_from_hydra, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = config_from_hydra(compose(APP_CONFIG_NAME, ["engine=vllm_v0", "engine.cpu_overhead_ms=0.5"]))
        with pytest.raises(Exception, match="engine"):
            compose(APP_CONFIG_NAME, ["engine=vllm_v9"])
        with pytest.raises(ConfigError, match="attention_launch='fused'"):
            config_from_hydra(compose(APP_CONFIG_NAME, ["engine.attention_launch=fused"]))
    assert cfg.engine.name == "vllm_v0" and cfg.engine.attention_launch == "split"
    assert cfg.engine.cpu_overhead_ms == 0.5 and cfg.engine.cpu_overhead_per_sequence_ms == 0.092


def test_fitted_run_summary_names_its_engine_and_the_engine_changes_mixed_batches():
    """The summary names the engine profile; Sarathi's mixed batches take longer fused than split."""
    fused = run_simulation(small_config(predictor="fitted", engine="servesim_execute"))
    split = run_simulation(small_config(predictor="fitted", engine="vllm_v0", cpu_overhead_s=0.00035))
    assert fused.summary["setup"]["engine"] == "servesim_execute" and split.summary["setup"]["engine"] == "vllm_v0"
    assert split.summary["e2e_s"]["mean"] < fused.summary["e2e_s"]["mean"]
    assert small_config().engine.name == "vllm_v1"  # the Python default, as the CLI's
    assert run_simulation(small_config()).summary["setup"]["engine"] is None  # the linear predictor has none


def test_cli_runs_and_writes_outputs(tmp_path):
    cmd = [sys.executable, "-m", "simulator.cli", "predictor=linear", "policy=vllm",
           "workload.num_requests=60", "progress=false", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "policy      vllm" in done.stdout and "TTFT (ms)" in done.stdout and "SLO 'relaxed'" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_requests"] == 60 and summary["setup"]["policy"] == "vllm"
    for name in ("requests.parquet", "iterations.parquet", "token_times.parquet"):
        assert (tmp_path / name).exists()
    assert not (tmp_path / "trace.json").exists()  # opt-in: about 80 MB for the whole default trace
    traced = subprocess.run(cmd[:-1] + ["trace=true", f"hydra.run.dir={tmp_path}/traced"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert traced.returncode == 0, traced.stderr
    events = json.loads((tmp_path / "traced" / "trace.json").read_text())["traceEvents"]
    assert sum(e["ph"] == "X" for e in events) == json.loads((tmp_path / "traced" / "summary.json").read_text())["num_iterations"]
    bad = subprocess.run(cmd[:3] + ["cluster.tp=3", f"hydra.run.dir={tmp_path}/bad"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "cluster.tp=3 does not divide" in bad.stderr


def test_header_names_gpus_in_total_and_per_replica_the_predictor_and_the_trace_file(tmp_path):
    from simulator.run_header import setup_lines

    trace = tmp_path / "my_trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                     + "".join(f"{i * 0.5},{100 + i},{8}\n" for i in range(20)))
    workload = {"name": "conversation", "trace": str(trace), "arrival": "trace", "lengths": "trace"}
    tp2 = run_simulation(small_config(cluster={"tp": 2}, workload=workload, policy={"name": "vllm"}))
    lines = setup_lines(tp2.summary["setup"])
    assert lines[0] == "model       llama-2-7b on 2 h100 GPUs: 1 replica of 2 GPUs (tp=2, pp=1)"
    assert lines[2] == "workload    conversation: trace my_trace.csv"  # a swapped trace keeps the name
    assert lines[3] == "predictor   linear roofline formula (uncalibrated; predictor=fitted uses the GPU profiles)"
    assert lines[4].startswith("KV cache    ") and lines[4].endswith("blocks of 16 tokens per replica")
    setup = tp2.summary["setup"]
    assert (setup["num_gpus"], setup["gpus_per_replica"], setup["trace"]) == (2, 2, "my_trace.csv")
    four = run_simulation(small_config(cluster={"num_replicas": 4, "tp": 2, "pp": 2}))
    assert setup_lines(four.summary["setup"])[0] == (
        "model       llama-2-7b on 16 h100 GPUs: 4 replicas of 4 GPUs (tp=2, pp=2), router round_robin")
    assert setup_lines(four.summary["setup"])[2] == ("workload    uniform-poisson-6qps: uniform lengths, poisson arrivals "
                                                     "at 6 req/s")


def test_the_fitted_predictor_is_named_with_its_engine_in_words():
    from simulator.run import predictor_description

    assert predictor_description(small_config(predictor="fitted", engine="vllm_v0")) == (
        "runtime model fitted to h100 profiles; engine vllm_v0: vLLM V0 (v0.4-v0.6) with FlashAttention-2")


def test_what_building_the_predictor_warns_is_a_header_note_not_a_raw_warning(monkeypatch, recwarn):
    """An all-reduce extrapolated to 4 GPUs (cluster=tp4_pp2) warned with its source line, per stage."""
    import pandas as pd

    from simulator import parts
    from simulator.cli import describe
    from simulator.linear_predictor import LinearPredictor
    from simulator.paths import PROFILES_DIR
    from simulator.runtime.comm import comm_curve

    def extrapolating_predictor(cfg, progress=False):
        path = PROFILES_DIR / "h200" / "comm" / "comm.csv"
        for _ in range(cfg.cluster.pp):
            comm_curve(pd.read_csv(path), path, "all_reduce", 4)
        return LinearPredictor.from_config(cfg.linear_predictor, cfg.model, cfg.hardware, 4, cfg.cluster.pp)

    monkeypatch.setattr(parts, "build_predictor", extrapolating_predictor)
    result = run_simulation(small_config(cluster={"tp": 4, "pp": 2}))
    assert [w for w in recwarn if w.category is UserWarning] == []
    [note] = result.summary["setup"]["notes"]
    assert note.startswith("data/profiles/h200/comm/comm.csv: no all_reduce measured at world_size=4;")
    assert describe(result.summary).splitlines()[5] == f"note        {note}"


def test_cli_help_describes_servesim_and_its_everyday_commands():
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.startswith("servesim: simulate LLM-inference serving on a CPU.")
    assert "Everyday commands:" in done.stdout and "servesim trace=true" in done.stdout
    assert "policy: faster_transformer, orca, sarathi, sglang, shortest_prompt_first, vllm, vllm_v1" in done.stdout
    assert "powered by Hydra" not in done.stdout


def test_an_overloaded_run_says_so_under_its_slo_verdicts():
    from simulator.cli import describe

    workload = SMALL_WORKLOAD | {"rate_qps": 200.0}  # far above what one H100 serves
    report = describe(run_simulation(small_config(workload=workload)).summary).splitlines()
    assert report[-1].startswith("note: overloaded: requests arrived at ") and "the queue grew" in report[-1]
    assert "note:" not in describe(run_simulation(small_config()).summary)
