"""The timing harness: statistics, input rotation, CPU timing of known durations."""
import time

import pytest
import torch

from profiler.timing import TimingSettings, input_sets_needed, summarize, time_call


def test_summarize_median_and_percentiles_by_hand():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats.time_ms == 3.0 and stats.repeats == 5
    # numpy linear interpolation over sorted [1..5]: p10 = 1 + 0.4 * 1, p90 = 4 + 0.6 * 1
    assert stats.p10_ms == pytest.approx(1.4) and stats.p90_ms == pytest.approx(4.6)
    assert stats.row() == {"time_ms": 3.0, "p10_ms": pytest.approx(1.4), "p90_ms": pytest.approx(4.6), "repeats": 5}


def test_summarize_rejects_bad_samples():
    for bad in ([], [1.0, float("nan")], [-1.0]):
        with pytest.raises(ValueError):
            summarize(bad)


def test_input_sets_cover_the_l2_flush_target():
    s = TimingSettings(l2_flush_factor=4.0, max_input_sets=64)
    l2 = 50 << 20
    assert input_sets_needed(1 << 30, l2, s) == 1          # already far bigger than L2
    assert input_sets_needed(50 << 20, l2, s) == 4          # 4 copies make 4 x L2
    assert input_sets_needed(30 << 20, l2, s) == 7          # ceil(200 / 30)
    assert input_sets_needed(1024, l2, s) == 64             # capped
    assert input_sets_needed(1024, 0, s) == 1               # CPU: no rotation


def test_cpu_timing_measures_a_known_sleep_and_cycles_sets():
    used = []

    def call(i):
        used.append(i)
        time.sleep(0.004)

    stats = time_call(call, num_sets=3, device=torch.device("cpu"),
                      settings=TimingSettings(warmup_calls=2, repeats=6))
    assert 3.9 <= stats.time_ms <= 40.0
    assert stats.p10_ms <= stats.time_ms <= stats.p90_ms and stats.repeats == 6
    assert not stats.used_graph
    assert set(used) == {0, 1, 2} and len(used) == 8        # 2 warm-up + 6 timed calls


def test_cpu_timing_orders_work_by_size():
    def make(seconds):
        return lambda i: time.sleep(seconds)
    settings = TimingSettings(warmup_calls=0, repeats=3)
    short = time_call(make(0.001), 1, torch.device("cpu"), settings)
    long = time_call(make(0.010), 1, torch.device("cpu"), settings)
    assert long.time_ms > short.time_ms + 5
