"""A wrong value anywhere in a run's config stops it with one line naming the field, before any fitting
or simulating: through run_simulation (ConfigError) and through the CLI (exit code 2, no traceback)."""
import json
import subprocess
import sys

import pytest

from simulator.config import ConfigError
from simulator.paths import CONF_DIR, REPO_ROOT
from simulator.run import SimulationConfig, run_simulation

WORKLOAD = {"trace": None, "arrival": "poisson", "rate_qps": 5.0, "lengths": "uniform",
            "min_tokens": 64, "max_tokens": 512, "num_requests": 20}


def config(**overrides) -> SimulationConfig:
    return SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "h100", "predictor": "linear",
                                       "workload": WORKLOAD} | overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"seed": -1}, r"seed=-1: expected a whole number >= 0"),
    ({"seed": 1.5}, r"seed=1\.5: expected a whole number"),
    ({"seed": True}, r"seed=True: expected a whole number"),
    ({"cpu_overhead_s": -1.0}, r"cpu_overhead_s=-1\.0: expected a finite number >= 0"),
    ({"cpu_overhead_s": float("nan")}, r"cpu_overhead_s=nan"),
    ({"fast_decode_runs": "yes"}, r"fast_decode_runs='yes': expected true or false"),
    ({"output_dir": 3}, r"output_dir=3: expected a directory path"),
    ({"linear_predictor": {"fixed_s": -0.01}}, r"linear_predictor\.fixed_s=-0\.01: expected a finite number >= 0"),
])
def test_a_run_setting_out_of_range_stops_before_anything_runs(overrides, message, nothing_runs):
    with pytest.raises(ConfigError, match=message):
        run_simulation(config(**overrides))


def test_zero_host_overhead_and_seed_zero_are_allowed():
    assert run_simulation(config(seed=0, cpu_overhead_s=0.0)).summary["completed"] == 20


def servesim(*overrides: str, out_dir) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "simulator.cli", "predictor=linear", "workload.num_requests=20",
           "progress=false", f"hydra.run.dir={out_dir}", *overrides]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("overrides, message", [
    (["policy=sarathi", "policy.chunk_size=0"], "servesim: policy.chunk_size=0: expected a whole number >= 1"),
    (["seed=-1"], "servesim: seed=-1: expected a whole number >= 0"),
])
def test_the_cli_answers_a_bad_value_with_one_line_and_exit_code_2(overrides, message, tmp_path):
    done = servesim(*overrides, out_dir=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("slos, message", [
    ([{"metric": "foo", "percentile": 99, "max_s": 1.0}], r"slo\.slos\[0\]: slo\.metric='foo' is not one of"),
    ([{"metric": "tbt_s", "percentile": 99, "max_s": 1.0}, {"metric": "ttft_s", "percentile": 150, "max_s": 1.0}],
     r"slo\.slos\[1\]: slo\.percentile=150 for ttft_s must be in \(0, 100\]"),
    ([{"metric": "ttft_s", "percentile": 90, "max_s": 0}], r"slo\.slos\[0\]: slo\.max_s=0"),
    ([{"metric": "ttft_s", "percentile": 90, "max_ms": 500}], r"slo\.slos\[0\]: .*max_ms"),
    ([{"metric": "ttft_s", "percentile": "p90", "max_s": 1.0}], r"slo\.slos\[0\]"),
])
def test_an_impossible_slo_stops_before_the_simulation(slos, message, nothing_runs):
    with pytest.raises(ConfigError, match=message):
        run_simulation(config(slo={"name": "bad", "slos": slos}))


def test_an_unwritable_output_directory_stops_before_the_simulation(tmp_path, nothing_runs):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=rf"output directory {a_file}[/\\]run: cannot write result files"):
        run_simulation(config(), out_dir=a_file / "run")
    with pytest.raises(ConfigError, match=r"output directory .*a_file: cannot write result files"):
        run_simulation(config(output_dir=str(a_file)))


def test_a_model_that_does_not_fit_its_gpus_stops_before_the_fit(nothing_runs):
    with pytest.raises(ConfigError, match=r"model llama-2-70b does not fit on h100 with cluster\.tp=1"):
        run_simulation(config(model="llama-2-70b", predictor="fitted"))


def test_a_bad_trace_stops_before_the_fit(tmp_path, nothing_runs):
    trace = tmp_path / "trace.csv"
    trace.write_text("num_prefill_tokens,num_decode_tokens\n100,10\n0,5\n")
    with pytest.raises(ConfigError, match=r"trace\.csv, line 3, column num_prefill_tokens"):
        run_simulation(config(predictor="fitted", workload={"trace": str(trace), "arrival": "poisson",
                                                           "rate_qps": 1.0, "lengths": "trace"}))


DISAGG = {"prefill": {"num_replicas": 1, "tp": 1, "policy": {"name": "vllm"}},
          "decode": {"num_replicas": 1, "tp": 1, "policy": {"name": "sarathi"}}}


@pytest.mark.parametrize("pool, change, message", [
    ("decode", {"policy": {"name": "sarathi", "chunk_size": 0}},
     r"cluster\.disagg\.decode: policy\.chunk_size=0: expected a whole number >= 1"),
    ("decode", {"hardware": "a100", "policy": {"name": "vllm", "max_num_seqs": -2}},
     r"cluster\.disagg\.decode: policy\.max_num_seqs=-2"),
    ("prefill", {"policy": {"name": "vllm", "max_num_batched_tokens": 1024}},
     r"cluster\.disagg\.prefill: policy\.max_num_batched_tokens=1024 is below the model's max_model_len"),
])
def test_a_disaggregated_pool_error_stops_before_either_pool_is_fitted(pool, change, message, nothing_runs):
    disagg = {**DISAGG, pool: {**DISAGG[pool], **change}}
    with pytest.raises(ConfigError, match=message):
        run_simulation(config(predictor="fitted", cluster={"disagg": disagg}))


def test_a_disaggregated_model_that_does_not_fit_a_pool_stops_before_the_fit(nothing_runs):
    disagg = {"prefill": {"tp": 4, "policy": {"name": "vllm"}}, "decode": {"tp": 1, "policy": {"name": "vllm"}}}
    with pytest.raises(ConfigError, match=r"cluster\.disagg\.decode: model llama-2-70b does not fit on h100"):
        run_simulation(config(model="llama-2-70b", predictor="fitted", cluster={"disagg": disagg}))


def test_the_cli_refuses_an_unknown_slo_metric_with_exit_code_2(tmp_path):
    done = servesim("slo.slos=[{metric:foo,percentile:99,max_s:1}]", out_dir=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("servesim: slo.slos[0]: slo.metric='foo'")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "summary.json").exists()


def test_two_runs_asking_for_the_same_directory_get_one_each(tmp_path):
    """What two runs started in the same second do: both ask for outputs/<date>/<time>."""
    same = "${unique_dir:'" + str(tmp_path / "same") + "'}"
    first, second = servesim("seed=1", out_dir=same), servesim("seed=2", out_dir=same)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert f"results: {tmp_path / 'same'}\n" in first.stdout and f"results: {tmp_path / 'same_2'}\n" in second.stdout
    seeds = [json.loads((tmp_path / d / "summary.json").read_text())["setup"]["seed"] for d in ("same", "same_2")]
    assert seeds == [1, 2]


def test_the_default_output_directories_are_claimed_uniquely():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from simulator.cli import APP_CONFIG_NAME, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        hydra = OmegaConf.to_container(compose(APP_CONFIG_NAME, return_hydra_config=True).hydra, resolve=False)
    assert hydra["run"]["dir"] == "${unique_dir:'outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}'}"
    assert hydra["sweep"]["dir"] == "${unique_dir:'multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}'}"


def test_unique_dir_creates_the_next_free_name_once_per_path(tmp_path, monkeypatch):
    from simulator import cli

    monkeypatch.setattr(cli, "_claimed_dirs", {})
    (tmp_path / "12-00-00").mkdir()  # another run's
    (tmp_path / "12-00-00_2").mkdir()  # and a third's
    wanted = str(tmp_path / "12-00-00")
    assert cli.unique_dir(wanted) == str(tmp_path / "12-00-00_3") == cli.unique_dir(wanted)
    assert (tmp_path / "12-00-00_3").is_dir() and not (tmp_path / "12-00-00_4").exists()


def test_a_run_into_a_used_directory_never_leaves_the_old_results_beside_its_own(tmp_path):
    run_simulation(config(seed=1), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="chunk_size=0"):  # a failed run: nothing of the first is left
        run_simulation(config(seed=2, policy={"name": "sarathi", "chunk_size": 0}), out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes.txt").write_text("mine")  # files that are not results stay
    run_simulation(config(seed=3), out_dir=tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["setup"]["seed"] == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_cli_run_into_a_used_directory_leaves_only_its_own_config(tmp_path):
    assert servesim("seed=1", out_dir=tmp_path).returncode == 0
    assert (tmp_path / "summary.json").exists()
    failed = servesim("engine.attention_launch=fused", out_dir=tmp_path)  # refused while reading the config
    assert failed.returncode == 2 and "attention_launch='fused'" in failed.stderr
    assert "engine.attention_launch=fused" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert not [p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".parquet")]
