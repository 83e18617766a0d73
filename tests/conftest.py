"""Fixtures shared by test directories."""
import pytest


@pytest.fixture()
def nothing_runs(monkeypatch):
    """Make fitting a predictor or simulating fail the test: a bad value must stop before either."""
    import simulator.cluster
    import simulator.disagg.run
    import simulator.run

    def refuse(*args, **kwargs):
        raise AssertionError("a bad value reached fitting or simulating")

    monkeypatch.setattr(simulator.run, "build_predictor", refuse)
    monkeypatch.setattr(simulator.cluster, "simulate", refuse)
    monkeypatch.setattr(simulator.disagg.run, "simulate_disaggregated", refuse)
