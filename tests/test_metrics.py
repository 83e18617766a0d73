"""Metrics: hand-computed per-request latencies, TBT boundary masking, summary rules, determinism."""
import json

import numpy as np
import pandas as pd
import pytest

from simulator.metrics import (
    IterationRecords,
    RequestRecords,
    format_summary,
    latency_stats,
    load_notes,
    request_latencies,
    request_table,
    summarize,
    summary_json,
    tbt_gaps_s,
)

NAN = np.nan


def records_from(token_lists, arrived, first_scheduled, completed=None, rejected=None, reasons=None,
                 output_tokens=None, preemptions=None, replica=None):
    """RequestRecords from per-request token-time lists (first token = first entry)."""
    n = len(token_lists)
    counts = [len(t) for t in token_lists]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    times = np.concatenate([np.asarray(t, dtype=float) for t in token_lists]) if sum(counts) else np.empty(0)
    first_token = np.array([t[0] if t else NAN for t in token_lists], dtype=float)
    if completed is None:
        completed = [t[-1] if t else NAN for t in token_lists]
    rejected = np.zeros(n, bool) if rejected is None else np.asarray(rejected, bool)
    reasons = ["" for _ in range(n)] if reasons is None else reasons
    return RequestRecords(
        request_id=np.arange(n, dtype=np.int64),
        replica_id=np.zeros(n, np.int64) if replica is None else np.asarray(replica, np.int64),
        arrived_s=np.asarray(arrived, float),
        prompt_tokens=np.full(n, 100, np.int64),
        output_tokens=np.asarray(counts if output_tokens is None else output_tokens, np.int64),
        first_scheduled_s=np.asarray(first_scheduled, float),
        first_token_s=first_token,
        completed_s=np.asarray(completed, float),
        preemptions=np.zeros(n, np.int64) if preemptions is None else np.asarray(preemptions, np.int64),
        rejected=rejected,
        reject_reason=np.asarray(reasons, dtype=object),
        token_times_s=times,
        token_offsets=offsets,
    )


def two_requests_and_a_rejection():
    # r0: arrives 0.0, scheduled 0.5, tokens 1.0 1.1 1.3 1.6 -> TTFT 1.0, gaps .1 .2 .3, TPOT .2, E2E 1.6
    # r1: arrives 0.5, scheduled 0.5, tokens 2.0 2.5          -> TTFT 1.5, gap .5, TPOT .5, E2E 2.0
    # r2: arrives 0.7, rejected (prompt too long), no tokens
    return records_from(
        [[1.0, 1.1, 1.3, 1.6], [2.0, 2.5], []],
        arrived=[0.0, 0.5, 0.7], first_scheduled=[0.5, 0.5, NAN],
        rejected=[False, False, True], reasons=["", "", "prompt_too_long"], output_tokens=[4, 2, 8],
        preemptions=[1, 0, 0],
    )


def test_request_table_hand_computed():
    table = request_table(two_requests_and_a_rejection())
    r0, r1, r2 = (table.iloc[i] for i in range(3))
    assert r0.ttft_s == pytest.approx(1.0) and r1.ttft_s == pytest.approx(1.5)
    assert r0.tpot_s == pytest.approx(0.2) and r1.tpot_s == pytest.approx(0.5)
    assert r0.e2e_s == pytest.approx(1.6) and r1.e2e_s == pytest.approx(2.0)
    assert r0.normalized_e2e_s_per_token == pytest.approx(0.4) and r1.normalized_e2e_s_per_token == pytest.approx(1.0)
    assert r0.queueing_delay_s == pytest.approx(0.5) and r1.queueing_delay_s == pytest.approx(0.0)
    assert r0.tbt_max_s == pytest.approx(0.3) and r1.tbt_max_s == pytest.approx(0.5)
    assert r0.tbt_p99_s == pytest.approx(0.2 + 0.98 * 0.1)  # np.percentile([.1, .2, .3], 99)
    assert r2.rejected and r2.reject_reason == "prompt_too_long"
    assert np.isnan([r2.ttft_s, r2.tpot_s, r2.e2e_s, r2.tbt_max_s]).all()
    assert list(table.columns) == [
        "request_id", "replica_id", "arrived_s", "prompt_tokens", "output_tokens", "first_scheduled_s",
        "first_token_s", "completed_s", "ttft_s", "tpot_s", "e2e_s", "normalized_e2e_s_per_token",
        "queueing_delay_s", "tbt_max_s", "tbt_p99_s", "preemptions", "cached_tokens", "prompt_tokens_computed",
        "rejected", "reject_reason",
    ]
    # Records without a prefix cache's counts: nothing cached, the whole prompt computed.
    assert list(table["cached_tokens"]) == [0, 0, 0]
    assert list(table["prompt_tokens_computed"]) == list(table["prompt_tokens"])


def test_tbt_gaps_mask_request_boundaries():
    records = two_requests_and_a_rejection()
    # 1.6 -> 2.0 crosses from r0 to r1 and is not a gap.
    np.testing.assert_allclose(tbt_gaps_s(records), [0.1, 0.2, 0.3, 0.5])
    # Empty and single-token requests in between contribute nothing and break nothing.
    odd = records_from([[0.0, 1.0], [], [5.0], [10.0, 10.5, 12.0], []],
                       arrived=[0, 0, 0, 0, 0], first_scheduled=[0, 0, 0, 0, 0])
    np.testing.assert_allclose(tbt_gaps_s(odd), [1.0, 0.5, 1.5])
    np.testing.assert_allclose(tbt_gaps_s(odd, request_ids=[3]), [0.5, 1.5])
    table = request_table(odd)
    assert np.isnan(table.tbt_max_s[2]) and np.isnan(table.tpot_s[2])  # one token: no gap


def test_rejected_requests_with_tokens_are_left_out_of_latencies():
    records = records_from([[1.0, 2.0], [1.0, 1.1]], arrived=[0.0, 0.0], first_scheduled=[0.0, 0.0],
                           rejected=[False, True], reasons=["", "preempted_too_often"])
    np.testing.assert_allclose(tbt_gaps_s(records), [1.0])
    summary = summarize(records, None, simulated_s=2.0, wall_s=0.1)
    assert summary["ttft_s"]["max"] == 1.0 and summary["rejected"] == 1 and summary["completed"] == 1


def test_per_request_p99_matches_numpy_on_random_requests():
    rng = np.random.default_rng(0)
    lists = [list(np.cumsum(rng.exponential(0.03, k))) for k in rng.integers(0, 300, 400)]
    records = records_from(lists, arrived=np.zeros(400), first_scheduled=np.zeros(400))
    table = request_table(records)
    for i, times in enumerate(lists):
        if len(times) < 2:
            assert np.isnan(table.tbt_p99_s[i]) and np.isnan(table.tbt_max_s[i])
            continue
        gaps = np.diff(times)
        assert table.tbt_p99_s[i] == pytest.approx(np.percentile(gaps, 99), abs=1e-12)
        assert table.tbt_max_s[i] == pytest.approx(gaps.max(), abs=1e-12)
        assert table.tpot_s[i] == pytest.approx(gaps.mean(), rel=1e-9)


def test_summary_hand_computed():
    s = summarize(two_requests_and_a_rejection(), None, simulated_s=3.0, wall_s=0.25)
    assert (s["num_requests"], s["completed"], s["unfinished"], s["rejected"]) == (3, 2, 0, 1)
    assert s["rejected_by_reason"] == {"prompt_too_long": 1}
    assert s["ttft_s"] == {"mean": 1.25, "p50": 1.25, "p90": 1.45, "p99": 1.495, "max": 1.5}
    # Gaps .1 .2 .3 .5: p90 at rank 2.7 -> .3 + .7 * .2; p99 at rank 2.97 -> .3 + .97 * .2
    assert s["tbt_s"] == {"mean": 0.275, "p50": 0.25, "p90": 0.44, "p99": 0.494, "max": 0.5}
    assert s["tpot_s"]["mean"] == 0.35 and s["e2e_s"]["mean"] == 1.8
    assert s["queueing_delay_s"]["max"] == 0.5
    # Makespan: first arrival 0.0 to last completion 2.5.
    assert s["makespan_s"] == 2.5 and s["throughput_rps"] == 0.8
    assert s["output_tokens_per_s"] == 2.4  # (4 + 2) / 2.5; the rejected request's 8 do not count
    assert s["offered_rps"] == pytest.approx(2 / 0.7, rel=1e-6)
    assert (s["preemptions"], s["requests_preempted"]) == (1, 1)
    assert (s["simulated_s"], s["wall_s"], s["num_iterations"]) == (3.0, 0.25, 0)


def test_summary_from_tables_the_caller_built_is_the_same():
    records = two_requests_and_a_rejection()
    gaps = tbt_gaps_s(records)
    given = summarize(records, None, 3.0, 0.25, latencies=request_latencies(records), tbt_gaps=gaps)
    assert given == summarize(records, None, 3.0, 0.25)
    assert sorted(gaps.tolist()) == pytest.approx([0.1, 0.2, 0.3, 0.5])  # reordered at most, same values
    # request_latencies: request_table's columns as numpy arrays, with the per-request TBT ones left NaN.
    latencies, full = request_latencies(records), request_table(records)
    assert list(latencies) == list(full.columns)
    assert np.isnan(latencies["tbt_p99_s"]).all() and not full["tbt_p99_s"].iloc[:2].isna().any()
    other = [c for c in full.columns if not c.startswith("tbt_")]
    assert pd.DataFrame(latencies)[other].equals(full[other])
    # The full table (a DataFrame) summarises the same.
    assert summarize(records, None, 3.0, 0.25, latencies=full) == given


def test_unfinished_requests_count_for_ttft_but_not_e2e():
    records = records_from([[1.0, 2.0], [1.5, 1.7]], arrived=[0.0, 0.0], first_scheduled=[0.0, 0.0],
                           completed=[2.0, NAN], output_tokens=[2, 10])
    s = summarize(records, None, simulated_s=2.0, wall_s=0.0)
    assert (s["completed"], s["unfinished"]) == (1, 1)
    assert s["ttft_s"]["p50"] == 1.25 and s["e2e_s"]["max"] == 2.0 and s["tpot_s"]["max"] == 1.0


def test_iteration_summary_counts_each_batch_once_across_pipeline_stages():
    # Two batches through a 2-stage pipeline: four stage rows, two iterations.
    iters = IterationRecords(
        replica_id=np.array([0, 0, 0, 0]), stage=np.array([0, 1, 0, 1]),
        start_s=np.array([0.0, 0.1, 0.1, 0.2]), duration_s=np.array([0.1, 0.1, 0.2, 0.2]),
        batch_size=np.array([2, 2, 4, 4]), num_prefill_tokens=np.array([100, 100, 0, 0]),
        num_decode_tokens=np.array([0, 0, 4, 4]), kv_blocks_used=np.array([10, 10, 12, 12]),
    )
    s = summarize(two_requests_and_a_rejection(), iters, simulated_s=3.0, wall_s=0.0)
    assert (s["num_iterations"], s["batch_size_mean"], s["batch_size_max"]) == (2, 3.0, 4)
    assert s["iteration_s"]["mean"] == pytest.approx(0.15)


def test_summary_json_is_deterministic_and_null_for_nan():
    records = two_requests_and_a_rejection()
    a = summary_json(summarize(records, None, 3.0, 0.25))
    b = summary_json(summarize(two_requests_and_a_rejection(), None, 3.0, 0.25))
    assert a == b
    keys = list(json.loads(a))
    assert keys == sorted(keys)
    # Nothing completed: latency blocks and throughput are null, not NaN (which is not JSON).
    nothing = records_from([[], []], arrived=[0.0, 1.0], first_scheduled=[NAN, NAN], rejected=[True, True],
                           reasons=["kv_capacity", "kv_capacity"])
    text = summary_json(summarize(nothing, None, 1.0, 0.0))
    parsed = json.loads(text)
    assert "NaN" not in text
    assert parsed["e2e_s"]["p99"] is None and parsed["throughput_rps"] is None
    assert parsed["rejected_by_reason"] == {"kv_capacity": 2}


def test_summary_floats_are_rounded_to_seven_significant_digits():
    assert latency_stats(np.array([1 / 3]))["mean"] == 0.3333333
    assert latency_stats(np.array([12345.678901]))["p50"] == 12345.68


def test_format_summary_shows_the_numbers():
    text = format_summary(summarize(two_requests_and_a_rejection(), None, 3.0, 0.25))
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines() if line.strip()}
    assert "1 rejected (1: prompt_too_long)" in text
    assert lines["TTFT (ms)"].split()[2:] == ["1,250.0", "1,250.0", "1,450.0", "1,495.0", "1,500.0"]
    assert lines["E2E (s)"].split()[2:] == ["1.80", "1.80", "1.96", "2.00", "2.00"]
    assert "0.800 req/s" in text


def test_format_summary_reports_simulation_and_runtime_model_times_apart():
    summary = summarize(two_requests_and_a_rejection(), None, 3.0, 10.0)
    assert "3.0 s simulated in 10.00 s\n" in format_summary(summary) + "\n"  # no predictor time recorded
    # A first run's fit of the runtime model (7.5 s of the 10 s wall time) is not simulation.
    text = format_summary(summary | {"predictor_build_s": 7.5})
    assert "3.0 s simulated in 2.50 s (+ 7.50 s to fit or load the runtime model)" in text


def stable_or_not(offered_rps: float, served_rps: float, longest_wait_s: float, rejected: int = 0) -> dict:
    """A summary's load numbers: 1,001 requests arriving over 1,000 / offered_rps seconds."""
    return {"num_requests": 1001, "rejected": rejected, "offered_rps": offered_rps, "throughput_rps": served_rps,
            "queueing_delay_s": {"max": longest_wait_s}}


def test_load_notes_explain_an_overloaded_queue_and_rejected_requests():
    # 5 req/s for 200 s: a burst that waited 3 s is not overload (3 s < 10 % of 200 s) ...
    assert load_notes(stable_or_not(5.0, 4.9, 3.0)) == []
    # ... a queue whose longest wait is 60 s of a 200 s arrival span is.
    [note] = load_notes(stable_or_not(5.0, 3.5, 60.0))
    assert note.startswith("overloaded: requests arrived at 5 req/s but were served at 3.5 req/s, so the queue "
                           "grew (longest wait 60.0 s); lower workload.rate_scale")
    [note] = load_notes(stable_or_not(5.0, 4.6, 0.5, rejected=91))
    assert note.startswith("91 of 1,001 requests (9.1%) were rejected and are left out of every latency")
    assert load_notes(stable_or_not(5.0, 5.0, 0.5, rejected=1)) == []  # one in a thousand changes nothing


def test_misaligned_records_name_the_field():
    records = two_requests_and_a_rejection()
    records.token_offsets = records.token_offsets[:-1]
    with pytest.raises(ValueError, match="token_offsets"):
        request_table(records)
    records = two_requests_and_a_rejection()
    records.completed_s = records.completed_s[:2]
    with pytest.raises(ValueError, match="RequestRecords.completed_s has 2 entries, expected 3"):
        summarize(records, None, 1.0, 0.0)
