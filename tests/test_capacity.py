"""Capacity search and SLO evaluation, on synthetic evaluate functions and hand-made tables."""
import math

import numpy as np
import pandas as pd
import pytest

from simulator.experiments.capacity import (
    SearchConfig,
    SearchError,
    Trial,
    check_slos,
    cost_per_million_tokens_usd,
    search_capacity,
)
from simulator.slo import SLO, SLOError, measured_requests, percentile, percentiles


def threshold_evaluator(threshold_qps, calls):
    """A monotone system: every rate up to `threshold_qps` passes."""

    def evaluate(rate_qps):
        calls.append(rate_qps)
        return Trial(rate_qps=rate_qps, feasible=rate_qps <= threshold_qps)

    return evaluate


def search(**overrides):
    settings = {"initial_rate_qps": 1.0, "growth_factor": 2.0, "tolerance": 0.02, "min_rate_qps": 0.01, "max_rate_qps": 1000}
    settings.update(overrides)
    return SearchConfig(**settings)


def test_finds_threshold_to_tolerance_in_the_expected_number_of_trials():
    calls = []
    result = search_capacity(threshold_evaluator(13.7, calls), search())
    # Bracketing: 1, 2, 4, 8 pass and 16 fails (5 trials). Bisection of [8, 16]: the width halves each
    # trial, 8 / 2**5 = 0.25 <= 0.02 * 13.5 while 8 / 2**4 = 0.5 is not, so 5 more trials.
    assert calls[:5] == [1, 2, 4, 8, 16]
    assert len(calls) == 10
    assert result.status == "converged"
    assert 13.7 * (1 - 0.02) <= result.capacity_qps <= 13.7
    assert result.lowest_failing_qps > 13.7
    assert (result.lowest_failing_qps - result.capacity_qps) <= 0.02 * result.capacity_qps
    assert len(set(calls)) == len(calls), "a rate was simulated twice"


@pytest.mark.parametrize("threshold", [0.37, 2.5, 99.0, 640.0])
def test_capacity_is_within_tolerance_below_any_threshold(threshold):
    calls = []
    result = search_capacity(threshold_evaluator(threshold, calls), search(tolerance=0.01))
    assert threshold * 0.99 <= result.capacity_qps <= threshold
    assert result.status == "converged"


def test_search_downward_when_the_first_rate_fails():
    calls = []
    result = search_capacity(threshold_evaluator(0.3, calls), search(initial_rate_qps=1.0))
    assert calls[:3] == [1.0, 0.5, 0.25]
    assert 0.3 * 0.98 <= result.capacity_qps <= 0.3


def test_infeasible_at_any_rate():
    calls = []
    result = search_capacity(threshold_evaluator(0.0, calls), search(min_rate_qps=0.1))
    assert result.status == "infeasible"
    assert result.capacity_qps == 0.0
    # 1, 0.5, 0.25, 0.125, then clamped to the floor 0.1 and stops.
    assert calls == [1.0, 0.5, 0.25, 0.125, 0.1]
    assert result.capacity_trial is None


def test_feasible_at_the_maximum_rate_stops_there():
    calls = []
    result = search_capacity(threshold_evaluator(math.inf, calls), search(max_rate_qps=20))
    assert calls == [1, 2, 4, 8, 16, 20]
    assert result.status == "feasible_at_max_rate"
    assert result.capacity_qps == 20
    assert result.capacity_trial.rate_qps == 20


def test_max_trials_returns_a_lower_bound():
    calls = []
    result = search_capacity(threshold_evaluator(13.7, calls), search(max_trials=7))
    assert len(calls) == 7
    assert result.status == "max_trials"
    assert result.capacity_qps <= 13.7 < result.lowest_failing_qps


def test_search_settings_are_validated_with_field_names():
    with pytest.raises(SearchError, match="search.tolerance"):
        SearchConfig(tolerance=0)
    with pytest.raises(SearchError, match="search.initial_rate_qps"):
        SearchConfig(initial_rate_qps=5000)
    with pytest.raises(SLOError, match="slo.metric"):
        SearchConfig(slos=[{"metric": "latency", "percentile": 99, "max_s": 1}])
    with pytest.raises(SLOError, match="slo.percentile"):
        SLO("ttft_s", 120, 1.0)


# --- SLO evaluation on hand-made tables -------------------------------------------------------------


def requests_table(ttft_s, queueing_s=None, rejected=None):
    n = len(ttft_s)
    return pd.DataFrame(
        {
            "request_id": np.arange(n),
            "arrived_s": np.arange(n, dtype=float),
            "ttft_s": np.asarray(ttft_s, dtype=float),
            "e2e_s": np.asarray(ttft_s, dtype=float) + 1.0,
            "normalized_e2e_s_per_token": (np.asarray(ttft_s, dtype=float) + 1.0) / 10,
            "queueing_delay_s": np.zeros(n) if queueing_s is None else np.asarray(queueing_s, float),
            "completed_s": np.arange(n, dtype=float) + 5.0,
            "rejected": np.zeros(n, bool) if rejected is None else np.asarray(rejected, bool),
        }
    )


def test_trimming_drops_warmup_and_cooldown_by_arrival_order():
    table = requests_table(np.arange(20.0)).sample(frac=1.0, random_state=3)  # shuffled rows
    kept = measured_requests(table, warmup_fraction=0.1, cooldown_fraction=0.25)
    assert list(kept["request_id"]) == list(range(2, 15))


def test_columns_and_dataframes_trim_and_check_alike():
    # The search passes metrics.request_latencies' columns (name -> array); a DataFrame works the same.
    rejected = np.zeros(40, bool)
    rejected[[3, 17]] = True
    table = requests_table(np.linspace(0.1, 2.0, 40), rejected=rejected)
    table.loc[30, ["completed_s", "e2e_s"]] = np.nan  # one unfinished request
    table["arrived_s"] = np.repeat(np.arange(20.0), 2)[::-1]  # arrival ties, broken by request_id
    columns = {name: table[name].to_numpy() for name in table.columns}
    kept_frame = measured_requests(table, warmup_fraction=0.1, cooldown_fraction=0.2)
    kept_columns = measured_requests(columns, warmup_fraction=0.1, cooldown_fraction=0.2)
    assert isinstance(kept_frame, pd.DataFrame) and isinstance(kept_columns, dict)
    assert kept_columns["request_id"].tolist() == kept_frame["request_id"].tolist()
    assert kept_frame["request_id"].tolist()[:4] == [34, 35, 32, 33]  # arrivals 2, 2, 3, 3 s
    gaps = np.linspace(0.01, 0.2, 300)
    settings = SearchConfig(slos=[SLO("ttft_s", 90, 1.5), SLO("e2e_s", 50, 2.0), SLO("tbt_s", 99, 0.1)])
    from_frame, from_columns = check_slos(kept_frame, gaps, settings), check_slos(kept_columns, gaps, settings)
    assert from_frame == from_columns
    assert from_columns[0]["unfinished"] == 1 and from_columns[0]["num_measured"] == 28


def test_percentile_matches_numpy_and_treats_unfinished_as_infinite():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(np.array([1.0, 2.0, np.inf]), 50) == 2.0
    assert percentile(np.array([1.0, 2.0, np.inf]), 99) == math.inf
    assert math.isnan(percentile(np.array([]), 99))


def test_percentiles_at_once_equal_one_at_a_time_numpy():
    """One partial sort for several percentiles gives numpy's value at each, bit for bit."""
    values = np.random.default_rng(3).exponential(size=10_001)
    values[::97] = np.inf  # unfinished requests
    qs = [0, 12.5, 50, 90, 99, 99.9, 100]
    expected = [float(np.percentile(np.minimum(values, 1e300), q)) for q in qs]
    expected = [math.inf if x >= 5e299 else x for x in expected]
    assert percentiles(values, qs) == expected
    assert [percentile(values, q) for q in qs] == expected


def test_slo_check_passes_and_fails_on_known_percentiles():
    # TTFT 0.0 .. 0.99 s in 100 requests: P90 = 0.891 s by linear interpolation.
    table = requests_table(np.arange(100) / 100)
    # 1000 gaps, the 10 largest 0.5 s: P99 sits at rank 989.01 -> 0.05 + 0.01 * 0.45 = 0.0545 s.
    gaps = np.concatenate([np.full(990, 0.05), np.full(10, 0.5)])
    strict = SearchConfig(slos=[SLO("ttft_s", 90, 0.9), SLO("tbt_s", 99, 0.1)])
    metrics, violations = check_slos(table, gaps, strict)
    assert metrics["ttft_s_p90"] == pytest.approx(0.891)
    assert metrics["tbt_s_p99"] == pytest.approx(0.0545)
    assert violations == []

    tighter = SearchConfig(slos=[SLO("ttft_s", 90, 0.85), SLO("tbt_s", 99.5, 0.1)])
    metrics, violations = check_slos(table, gaps, tighter)
    assert [v.split(" ")[0] for v in violations] == ["p90_ttft_s<=0.85", "p99.5_tbt_s<=0.1"]
    assert metrics["tbt_s_p99.5"] == pytest.approx(0.5)  # rank 994.005 is among the 0.5 s gaps


def test_unbounded_queueing_fails_even_when_token_latencies_look_fine():
    queueing = np.linspace(0.0, 30.0, 50)  # a queue that keeps growing
    table = requests_table(np.full(50, 0.1), queueing_s=queueing)
    settings = SearchConfig(slos=[SLO("tbt_s", 99, 0.1), SLO("queueing_delay_s", 99, 5.0)])
    _, violations = check_slos(table, np.full(500, 0.02), settings)
    assert len(violations) == 1 and violations[0].startswith("p99_queueing_delay_s<=5")


def test_rejected_requests_fail_a_trial_beyond_the_allowed_share():
    rejected = np.zeros(100, bool)
    rejected[:3] = True
    table = requests_table(np.full(100, 0.1), rejected=rejected)
    gaps = np.full(100, 0.01)
    slos = [SLO("ttft_s", 99, 1.0)]
    metrics, violations = check_slos(table, gaps, SearchConfig(slos=slos, max_rejected_fraction=0.0))
    assert metrics["rejected_fraction"] == pytest.approx(0.03)
    assert violations and violations[0].startswith("rejected")
    _, violations = check_slos(table, gaps, SearchConfig(slos=slos, max_rejected_fraction=0.05))
    assert violations == []


def test_unfinished_request_violates_every_tail_latency():
    table = requests_table(np.full(10, 0.1))
    table.loc[9, ["completed_s", "e2e_s"]] = np.nan
    metrics, violations = check_slos(table, np.full(90, 0.01), SearchConfig(slos=[SLO("e2e_s", 99, 100.0)]))
    assert metrics["unfinished"] == 1
    assert metrics["e2e_s_p99"] == math.inf
    assert len(violations) == 1


def test_cost_per_million_tokens():
    # 2 GPUs at $2.5/h serving 10 req/s of 500 tokens: 18e6 tokens/h for $5 -> $0.2778 per million.
    assert cost_per_million_tokens_usd(10.0, 500.0, 2, 2.5) == pytest.approx(5 / 18)
    assert cost_per_million_tokens_usd(10.0, 500.0, 2, 0.0) is None
    assert cost_per_million_tokens_usd(0.0, 500.0, 2, 2.5) is None
