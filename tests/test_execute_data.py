"""The committed real-execution tables (data/validation/h100/fidelity) are complete and self-consistent."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from simulator.paths import DATA_DIR

FIDELITY = DATA_DIR / "validation" / "h100" / "fidelity"
PLAN = FIDELITY / "plan.json"

pytestmark = pytest.mark.skipif(not (FIDELITY / "runs").exists(), reason="no committed fidelity runs")


def plan_cells():
    return json.loads(PLAN.read_text())["cells"] if PLAN.exists() else []


@pytest.mark.parametrize("cell", plan_cells(), ids=lambda c: c["name"])
def test_every_plan_cell_was_executed_on_an_h100_and_is_consistent(cell):
    run = FIDELITY / "runs" / cell["name"]
    config = json.loads((run / "config.json").read_text())
    assert config == cell["config"]  # exactly the planned configuration was served
    execution = json.loads((run / "execution.json").read_text())
    assert execution["device"] == "cuda" and execution["num_layers"] == 32 and execution["cuda_graphs"]
    requests = pd.read_parquet(run / "requests.parquet")
    tokens = pd.read_parquet(run / "token_times.parquet")
    steps = pd.read_parquet(run / "steps.parquet")
    iterations = pd.read_parquet(run / "iterations.parquet")
    comp = pd.read_parquet(run / "compositions.parquet")
    assert len(requests) == cell["num_requests"] and requests["completed_s"].notna().all()
    assert (requests["ttft_s"] > 0).all()
    # Every output token once.
    assert tokens.groupby("request_id").size().reindex(requests["request_id"]).tolist() == \
        requests["output_tokens"].tolist()
    assert len(steps) == len(iterations) == comp["iteration"].nunique()
    assert np.allclose(steps["duration_s"], iterations["duration_s"])
    assert (steps["gpu_s"] > 0).all() and (steps["gpu_s"] <= steps["duration_s"] + 1e-4).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["setup"]["predictor"] == "measured (real execution)"


def test_environment_is_an_h100():
    for name in ("environment_conversation.json", "environment_arxiv.json"):
        env = json.loads((FIDELITY / name).read_text())["environment"]
        assert env["gpu_name"] == "NVIDIA H100 80GB HBM3" and env["torch"].startswith("2.11")
