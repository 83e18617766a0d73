"""A fit without measured whole iterations of its own borrows the calibration measured on the same GPU."""
import dataclasses

import pandas as pd
import pytest

from simulator.runtime import build as build_module  # where the predictor is built and calibrated
from simulator.runtime.fitted import FittedRuntime

MEASURED = {  # (model, tp) -> (scale, ms per layer) as if fitted from its own measured iterations
    ("llama-2-7b", 1): (1.06, 0.000),
    ("llama-3-8b", 1): (1.04, 0.010),
    ("llama-2-70b", 4): (1.08, 0.002),
}


def bare_fit(model_name: str, tp: int) -> FittedRuntime:
    return FittedRuntime(model_name=model_name, hardware_profile="h100", tp=tp, grid_tokens=None, op_ms={},
                         attention_family="", attention_coef=None, attention_trees=None, attention_q_heads=1,
                         attention_kv_heads=1, attention_block_m=128, num_sms=132)


@pytest.fixture
def measured_gpu(monkeypatch, tmp_path):
    """Validation files for MEASURED (12 rows each) plus one too short to calibrate; fits answered from MEASURED."""
    paths = []
    for name, tp in MEASURED:
        path = tmp_path / name / "iterations.csv"
        path.parent.mkdir(exist_ok=True)
        pd.DataFrame({"tp": [tp] * 12}).to_csv(path, index=False)
        paths.append(path)
    short = tmp_path / "mistral-7b" / "iterations.csv"
    short.parent.mkdir()
    pd.DataFrame({"tp": [1] * 9}).to_csv(short, index=False)
    paths.append(short)
    asked = []

    def fitted_runtime(model, hardware, tp, files, cache_directory=None, progress=False):
        asked.append((model.name, tp))
        scale, per_layer = MEASURED[(model.name, tp)]
        return dataclasses.replace(bare_fit(model.name, tp), calibration_scale=scale, calibration_layer_ms=per_layer,
                                   calibration_source="measured")

    monkeypatch.setattr(build_module, "validation_csvs", lambda hardware: sorted(paths))
    monkeypatch.setattr(build_module, "read_iterations", pd.read_csv)
    monkeypatch.setattr(build_module, "fitted_runtime", fitted_runtime)
    monkeypatch.setattr(build_module, "profile_files", lambda model, hardware, profiles_dir: None)
    return asked


class Files:
    profile_dir = build_module.PROFILES_DIR / "h100" / "any-model"


def borrow(model_name: str, tp: int) -> FittedRuntime:
    fitted = bare_fit(model_name, tp)
    build_module.borrow_calibration(fitted, hardware=None, files=Files())
    return fitted


def test_another_model_borrows_the_mean_of_the_measured_models(measured_gpu):
    fitted = borrow("yi-34b", 2)
    assert fitted.calibration_scale == pytest.approx((1.06 + 1.04 + 1.08) / 3)
    assert fitted.calibration_layer_ms == pytest.approx(0.004)
    assert fitted.calibration_source == "borrowed from llama-2-70b tp=4, llama-2-7b tp=1, llama-3-8b tp=1"
    assert fitted.calibration_rows == 0
    assert ("mistral-7b", 1) not in measured_gpu  # 9 rows: too few to have calibrated anything


def test_a_measured_model_at_another_tp_borrows_its_own_nearest_tp(measured_gpu):
    fitted = borrow("llama-2-70b", 8)
    assert (fitted.calibration_scale, fitted.calibration_layer_ms) == (1.08, 0.002)
    assert fitted.calibration_source == "borrowed from llama-2-70b tp=4"
    assert measured_gpu == [("llama-2-70b", 4)]


def test_nothing_measured_leaves_the_fit_uncalibrated(monkeypatch):
    monkeypatch.setattr(build_module, "validation_csvs", lambda hardware: [])
    fitted = borrow("yi-34b", 2)
    assert (fitted.calibration_scale, fitted.calibration_layer_ms, fitted.calibration_source) == (1.0, 0.0, "")


def test_the_predictor_reports_its_calibration_for_run_summaries(make_predictor):
    predictor = make_predictor()  # synthetic profiles, nothing measured on their GPU
    assert predictor.calibration == {"scale": 1.0, "per_layer_ms": 0.0, "source": "none", "measured_rows": 0}
