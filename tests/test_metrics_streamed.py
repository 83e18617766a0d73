"""Large runs read and write their token and iteration rows a chunk at a time: with tiny chunks forced, every
result file, the summary and the SLO verdicts equal what the whole in-memory arrays give."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from simulator import metrics, slo
from simulator.run import SimulationConfig, run_simulation
from simulator.slo import SLOConfig

WORKLOAD = {"trace": None, "arrival": "poisson", "rate_qps": 40.0, "lengths": "uniform",
            "min_tokens": 64, "max_tokens": 1024, "num_requests": 120}


@pytest.fixture(scope="module")
def small_run():
    """One replica, busy enough for batches of dozens (a queue, long and short gaps)."""
    cfg = SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "h100", "predictor": "linear",
                                      "workload": WORKLOAD, "policy": {"name": "vllm"}})
    return run_simulation(cfg)


def records_with_ties(num_requests: int, tokens: int, seed: int) -> metrics.RequestRecords:
    """Requests 0..n-1 with `tokens` output tokens 10-50 ms apart on a 1 ms grid (many equal gaps), every
    seventh rejected."""
    rng = np.random.default_rng(seed)
    arrived = np.cumsum(rng.exponential(0.1, num_requests))
    rejected = np.arange(num_requests) % 7 == 3
    counts = np.where(rejected, 0, tokens)
    gaps = np.round(rng.uniform(0.01, 0.05, (num_requests, tokens)), 3)
    times = (arrived[:, None] + 0.2 + np.cumsum(gaps, axis=1))[~rejected].ravel()
    nan = np.full(num_requests, np.nan)
    last = np.where(rejected, np.nan, arrived + 0.2 + gaps.sum(axis=1))
    return metrics.RequestRecords(
        request_id=np.arange(num_requests), replica_id=np.zeros(num_requests, np.int64), arrived_s=arrived,
        prompt_tokens=np.full(num_requests, 100), output_tokens=counts, first_scheduled_s=nan,
        first_token_s=nan, completed_s=last, preemptions=np.zeros(num_requests, np.int64), rejected=rejected,
        reject_reason=np.where(rejected, "too long", "").astype(object), token_times_s=times,
        token_offsets=np.concatenate([[0], np.cumsum(counts)]))


@pytest.mark.parametrize("tokens_per_chunk", [1, 5, 64, 10**6])
def test_streamed_gap_statistics_equal_those_of_the_whole_array(tokens_per_chunk):
    records = records_with_ties(300, 40, seed=tokens_per_chunk)
    gaps = metrics.tbt_gaps_s(records)
    streamed = metrics.StreamedGaps(records, tokens_per_chunk)
    assert len(streamed) == len(gaps) == 257 * 39
    assert np.array_equal(np.concatenate(list(streamed.chunks())), gaps)
    assert streamed.stats() == metrics.latency_stats(gaps.copy())
    qs = [0, 1, 33.3, 50, 90, 99, 99.9, 100]
    for unbounded in (0, 3, 5000):  # unfinished requests' missing tokens: inf once they reach a percentile
        with_inf = np.append(gaps, np.full(unbounded, np.inf))
        assert slo.percentiles(streamed.with_unbounded(unbounded), qs) == slo.percentiles(with_inf, qs)


def test_streamed_gap_statistics_of_equal_and_no_gaps():
    records = records_with_ties(20, 30, seed=1)
    records.token_times_s = np.repeat(np.arange(len(records.token_times_s) // 30) * 10.0, 30)
    records.token_times_s += np.tile(np.arange(30) * 0.25, len(records.token_times_s) // 30)  # all gaps 0.25
    assert metrics.StreamedGaps(records, 2).stats() == dict.fromkeys(["mean", "p50", "p90", "p99", "max"], 0.25)
    records.rejected[:] = True
    assert metrics.StreamedGaps(records, 2).stats() == dict.fromkeys(["mean", "p50", "p90", "p99", "max"])
    assert np.isnan(slo.percentiles(metrics.StreamedGaps(records, 2), [50])).all()


def test_results_written_in_chunks_equal_the_in_memory_tables(small_run, tmp_path):
    records, iters, summary = small_run.records, small_run.iteration_records, small_run.summary
    assert len(records.token_times_s) > 10_000 and len(iters) > 500
    chunked = metrics.write_outputs(tmp_path / "chunked", records, iters, summary, trace=False, rows_per_chunk=37)
    whole = metrics.write_outputs(tmp_path / "whole", records, iters, summary, trace=False, rows_per_chunk=10**9)
    expected = {"requests.parquet": small_run.requests, "iterations.parquet": small_run.iterations,
                "token_times.parquet": metrics.token_times_table(records)}
    for name, table in expected.items():
        for paths in (chunked, whole):
            pd.testing.assert_frame_equal(pd.read_parquet(paths[name]), table, check_exact=True)
    # The chunked files really are many row groups (the whole ones: pyarrow's default groups).
    assert pq.ParquetFile(chunked["token_times.parquet"]).num_row_groups > 100
    assert pq.ParquetFile(chunked["iterations.parquet"]).num_row_groups > 10
    assert pq.ParquetFile(whole["iterations.parquet"]).num_row_groups == 1
    assert chunked["summary.json"].read_text() == whole["summary.json"].read_text() == metrics.summary_json(summary)
    assert json.loads(chunked["summary.json"].read_text())["num_requests"] == WORKLOAD["num_requests"]
    # The dtypes pandas reads back are the documented ones.
    tokens = pd.read_parquet(chunked["token_times.parquet"])
    assert tokens.dtypes.astype(str).tolist() == ["int64", "int32", "float64"]
    rows = pd.read_parquet(chunked["iterations.parquet"])
    assert rows.drop(columns="kind").dtypes.astype(str).tolist() == ["int64"] * 2 + ["float64"] * 3 + ["int64"] * 5  # ... kv_blocks_used, kv_blocks_cached


def test_summary_and_slo_verdicts_from_streamed_gaps_equal_the_in_memory_ones(small_run):
    records, iters = small_run.records, small_run.iteration_records
    latencies = metrics.request_latencies(records)
    in_memory = metrics.summarize(records, iters, 10.0, 1.0, latencies=latencies, tbt_gaps=metrics.tbt_gaps_s(records))
    for tokens_per_chunk in (3, 1000):
        streamed = metrics.StreamedGaps(records, tokens_per_chunk)
        assert metrics.summarize(records, iters, 10.0, 1.0, latencies=latencies, tbt_gaps=streamed) == in_memory
        strict = SLOConfig(name="tight", slos=[{"metric": "tbt_s", "percentile": 99.0, "max_s": 0.05},
                                               {"metric": "tbt_s", "percentile": 50.0, "max_s": 0.02}])
        assert slo.evaluate_slos(strict, latencies, streamed) == \
            slo.evaluate_slos(strict, latencies, metrics.tbt_gaps_s(records))
    # Above one chunk of tokens, runs read the gaps streamed; below, as one array.
    assert isinstance(metrics.all_tbt_gaps(records, max_tokens_in_one_array=100), metrics.StreamedGaps)
    assert isinstance(metrics.all_tbt_gaps(records), np.ndarray)
