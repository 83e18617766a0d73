"""Workload: trace replay, synthetic arrivals and lengths, clipping, config checks, YAMLs."""
from pathlib import Path

import numpy as np
import pytest

from simulator.config import ConfigError
from simulator.paths import CONF_DIR, TRACES_DIR
from simulator.workload import (
    WorkloadConfig,
    load_workload,
    load_workload_config,
    synthetic_arrivals_s,
    synthetic_lengths,
)

CONV = "data/traces/splitwise_conv.csv"
ARXIV = "data/traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"


def test_conversation_trace_replays_rows_in_order():
    w = load_workload(WorkloadConfig(trace=CONV), seed=0)
    assert len(w) == 19366
    assert w.arrived_s.dtype == np.float64 and w.prompt_tokens.dtype == np.int64
    # First rows of the file: 0.0,374,44 / 4.314579,396,109
    assert w.arrived_s[:2].tolist() == [0.0, 4.314579]
    assert w.prompt_tokens[:2].tolist() == [374, 396]
    assert w.output_tokens[:2].tolist() == [44, 109]
    assert np.all(np.diff(w.arrived_s) >= 0)
    assert int(np.median(w.prompt_tokens)) == 1020 and int(np.median(w.output_tokens)) == 129
    assert w.name == "splitwise_conv"


def test_rate_scale_and_num_requests():
    base = load_workload(WorkloadConfig(trace=CONV, num_requests=100), seed=0)
    fast = load_workload(WorkloadConfig(trace=CONV, num_requests=100, rate_scale=2.0), seed=0)
    assert len(base) == 100
    np.testing.assert_allclose(fast.arrived_s, base.arrived_s / 2)
    np.testing.assert_array_equal(fast.prompt_tokens, base.prompt_tokens)
    with pytest.raises(ConfigError, match="has only 19366 requests"):
        load_workload(WorkloadConfig(trace=CONV, num_requests=20000), seed=0)


def test_trace_without_arrivals_needs_a_generated_arrival_process():
    with pytest.raises(ConfigError, match="no arrival times"):
        load_workload(WorkloadConfig(trace=ARXIV, arrival="trace"), seed=0)


def test_trace_lengths_with_poisson_arrivals_use_each_row_once_per_pass():
    cfg = WorkloadConfig(trace=ARXIV, arrival="poisson", rate_qps=3.0)
    w = load_workload(cfg, seed=1)
    raw = np.loadtxt(TRACES_DIR / Path(ARXIV).name, delimiter=",", skiprows=1)[:, :2].astype(np.int64)
    assert len(w) == len(raw) == 28257
    # Same multiset of (prompt, output) pairs, in a shuffled order.
    got = np.sort(w.prompt_tokens * 100_000 + w.output_tokens)
    want = np.sort(raw[:, 0] * 100_000 + raw[:, 1])
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(w.prompt_tokens, raw[:, 0])
    # More requests than rows: every row appears twice in 2 full passes.
    twice = load_workload(WorkloadConfig(trace=ARXIV, arrival="poisson", num_requests=2 * 28257), seed=1)
    np.testing.assert_array_equal(np.sort(twice.prompt_tokens), np.sort(np.repeat(raw[:, 0], 2)))


def test_same_seed_same_workload_and_streams_are_independent():
    cfg = WorkloadConfig(trace=ARXIV, arrival="gamma", interarrival_cv=2.0, rate_qps=4.0, num_requests=500)
    a, b = load_workload(cfg, seed=7), load_workload(cfg, seed=7)
    np.testing.assert_array_equal(a.arrived_s, b.arrived_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    c = load_workload(cfg, seed=8)
    assert not np.array_equal(a.arrived_s, c.arrived_s)
    # Changing the lengths leaves the arrival times alone (separate random streams).
    uniform = WorkloadConfig(trace=None, arrival="gamma", interarrival_cv=2.0, rate_qps=4.0, num_requests=500,
                             lengths="uniform")
    np.testing.assert_array_equal(load_workload(uniform, seed=7).arrived_s, a.arrived_s)


@pytest.mark.parametrize("process,cv", [("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5)])
def test_synthetic_arrival_rate_and_burstiness(process, cv):
    rate = 5.0
    arrived = synthetic_arrivals_s(process, 200_001, rate, cv, np.random.default_rng(0))
    gaps = np.diff(arrived)
    assert arrived[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_fixed_arrivals_are_evenly_spaced():
    arrived = synthetic_arrivals_s("fixed", 5, 4.0, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(arrived, [0.0, 0.25, 0.5, 0.75, 1.0])


def test_uniform_lengths_bounds_and_split():
    prompt, output = synthetic_lengths("uniform", 100_000, 10, 30, 4.0, 0.0, np.random.default_rng(0))
    total = prompt + output
    assert total.min() == 10 and total.max() == 30  # both ends reachable
    assert np.all(prompt >= 1) and np.all(output >= 1)
    np.testing.assert_array_equal(output, np.rint(total / 5).astype(np.int64))
    counts = np.bincount(total)[10:]
    assert counts.min() > 0.9 * 100_000 / 21  # roughly flat


def test_zipf_lengths_follow_the_power_law():
    n, theta = 400_000, 1.0
    prompt, output = synthetic_lengths("zipf", n, 100, 199, 1.0, theta, np.random.default_rng(0))
    total = prompt + output
    assert total.min() >= 100 and total.max() <= 199
    freq = np.bincount(total - 100, minlength=100) / n
    harmonic = np.sum(1.0 / np.arange(1, 101) ** theta)
    assert freq[0] == pytest.approx(1 / harmonic, rel=0.02)  # the smallest length is the most likely
    assert freq[1] / freq[0] == pytest.approx(0.5, rel=0.05)  # P(rank 2) / P(rank 1) = 2**-theta
    assert freq[99] == pytest.approx(1 / (100 * harmonic), rel=0.15)


def test_fixed_lengths_and_clipping():
    cfg = WorkloadConfig(trace=None, arrival="fixed", rate_qps=1.0, lengths="uniform", min_tokens=640,
                         max_tokens=640, prefill_decode_ratio=4.0, num_requests=10)
    w = load_workload(cfg, seed=0)
    assert set(w.prompt_tokens.tolist()) == {512} and set(w.output_tokens.tolist()) == {128}
    clipped = load_workload(WorkloadConfig(trace=CONV, max_prompt_tokens=1000, max_output_tokens=50), seed=0)
    full = load_workload(WorkloadConfig(trace=CONV), seed=0)
    np.testing.assert_array_equal(clipped.prompt_tokens, np.minimum(full.prompt_tokens, 1000))
    np.testing.assert_array_equal(clipped.output_tokens, np.minimum(full.output_tokens, 50))


@pytest.mark.parametrize("field,value,message", [
    ("arrival", "uniform", "workload.arrival='uniform'"),
    ("lengths", "normal", "workload.lengths='normal'"),
    ("rate_qps", 0.0, "workload.rate_qps=0.0"),
    ("interarrival_cv", -1.0, "workload.interarrival_cv"),
    ("max_tokens", 10, "workload.max_tokens=10: expected >= min_tokens"),
    ("rate_scale", 2.0, "workload.rate_scale=2.0"),  # only meaningful for trace replay
    ("max_tokens", 2**63 - 1, "workload.max_tokens=9223372036854775807: expected <= 2,147,483,647"),  # overflowed
])
def test_bad_config_values_name_the_field(field, value, message):
    cfg = WorkloadConfig(trace=None, arrival="poisson", lengths="uniform", num_requests=10, min_tokens=64)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_workload(cfg, seed=0)


def test_fully_synthetic_workload_needs_num_requests():
    with pytest.raises(ConfigError, match="workload.num_requests must be set"):
        load_workload(WorkloadConfig(trace=None, arrival="poisson", lengths="zipf"), seed=0)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "workload").glob("*.yaml")))
def test_every_workload_yaml_builds_a_sorted_workload(name):
    cfg = load_workload_config(name)
    w = load_workload(cfg, seed=0)
    assert w.name == name
    assert len(w) == (cfg.num_requests or len(w)) and len(w) > 0
    assert w.arrived_s[0] == 0.0 and np.all(np.diff(w.arrived_s) >= 0)
    assert np.all(w.prompt_tokens >= 1) and np.all(w.output_tokens >= 1)
    # Offered rate is the configured one, within sampling noise (multiturn: rate_qps counts sessions).
    if cfg.arrival != "trace" and cfg.lengths != "multiturn":
        assert (len(w) - 1) / w.arrived_s[-1] == pytest.approx(cfg.rate_qps, rel=0.15)


def test_yaml_overrides_are_checked():
    assert load_workload_config("arxiv_poisson", rate_qps=2.5).rate_qps == 2.5
    with pytest.raises(ConfigError, match="unknown field"):
        load_workload_config("arxiv_poisson", qps=2.5)
