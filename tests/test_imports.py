"""Start-up cost: a simulation that writes no files runs without importing pandas (~0.3 s of a 2 s budget).

pandas is imported only where a DataFrame is handed to the user (result tables, output files, reports).
"""
import subprocess
import sys


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_simulator_modules_do_not_import_pandas():
    code = ("import sys; import simulator.run, simulator.cluster, simulator.workload, simulator.metrics, "
            "simulator.experiments.capacity; print('pandas' in sys.modules)")
    assert run_python(code) == "False"


def test_a_run_without_output_files_does_not_import_pandas(tmp_path):
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     + "".join(f"2023-11-16 18:15:{i:02d}.6805900,{100 + i},{5 + i}\n" for i in range(40)))
    workloads = [
        {"trace": "data/traces/splitwise_conv.csv", "arrival": "trace", "lengths": "trace", "num_requests": 50},
        {"trace": str(azure), "arrival": "trace", "lengths": "trace"},
        {"trace": None, "arrival": "poisson", "rate_qps": 2.0, "lengths": "uniform", "num_requests": 50},
    ]
    code = f"""
import sys
from simulator.run import SimulationConfig, run_simulation
for workload in {workloads!r}:
    cfg = SimulationConfig.from_dict({{"model": "llama-2-7b", "hardware": "h100", "predictor": "linear",
                                      "workload": workload, "policy": {{"name": "vllm"}}}})
    result = run_simulation(cfg)
    assert result.summary["completed"] > 0 and "slo" in result.summary
print('pandas' in sys.modules)
print(type(result.requests).__name__, 'pandas' in sys.modules)  # a table for the user: pandas now
"""
    assert run_python(code).splitlines() == ["False", "DataFrame True"]


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts (what may import what), as `lint-imports` checks them."""
    import importlib.util
    import shutil

    import pytest

    if importlib.util.find_spec("importlinter") is None or shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run(["lint-imports"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-3000:]
