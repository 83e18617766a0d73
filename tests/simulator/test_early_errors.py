"""A wrong value anywhere in a run's config stops it with one line naming the field, before any fitting
or simulating: through run_simulation (ConfigError) and through the CLI (exit code 2, no traceback)."""
import subprocess
import sys

import pytest

from simulator.config import ConfigError
from simulator.paths import REPO_ROOT
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
