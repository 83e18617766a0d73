"""Test-wide hooks and fixtures. The suite runs on a machine without torch:

torch is an optional extra (`profile`): the profiler's and the real-GPU executor's tests import it, the
rest of the suite does not. Where torch is not installed, a test module that fails to import only for
want of torch is reported as skipped, with the reason and how to get those tests, instead of as a
collection error that stops the run.
"""
from __future__ import annotations

import importlib.util

import pytest

TORCH_MISSING = ("torch is not installed: the profiler's and executor's CPU tests need it "
                 "(pip install torch --index-url https://download.pytorch.org/whl/cpu, then pytest again)")


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:  # a parent package that fails to import counts as absent
        return False


def missing_torch_only(report) -> bool:
    """Whether a failed collection report is a module failing to import torch and nothing else."""
    return report.failed and "ModuleNotFoundError: No module named 'torch" in str(report.longrepr)


def pytest_report_header(config):
    return None if torch_installed() else f"{TORCH_MISSING}; those test modules are skipped"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if missing_torch_only(report) and not torch_installed():
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), None, f"Skipped: {TORCH_MISSING}")
    return report


@pytest.fixture()
def nothing_runs(monkeypatch):
    """Make fitting a predictor or simulating fail the test: a bad value must stop before either."""
    import simulator.cluster
    import simulator.disagg.run
    import simulator.parts

    def refuse(*args, **kwargs):
        raise AssertionError("a bad value reached fitting or simulating")

    monkeypatch.setattr(simulator.parts, "build_predictor", refuse)
    monkeypatch.setattr(simulator.cluster, "simulate", refuse)
    monkeypatch.setattr(simulator.disagg.run, "simulate_disaggregated", refuse)
