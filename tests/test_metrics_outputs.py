"""Result files: parquet tables round-trip, summary.json, and a Perfetto trace with the expected events."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.metrics import (
    IterationRecords,
    RequestRecords,
    request_table,
    summarize,
    summary_json,
    write_outputs,
)


def two_requests_and_a_rejection():
    """r0 tokens at 1.0 1.1 1.3 1.6, r1 at 2.0 2.5, r2 rejected (same scenario as test_metrics.py)."""
    nan = np.nan
    return RequestRecords(
        request_id=np.arange(3), replica_id=np.array([0, 1, -1]), arrived_s=np.array([0.0, 0.5, 0.7]),
        prompt_tokens=np.array([100, 100, 100]), output_tokens=np.array([4, 2, 8]),
        first_scheduled_s=np.array([0.5, 0.5, nan]), first_token_s=np.array([1.0, 2.0, nan]),
        completed_s=np.array([1.6, 2.5, nan]), preemptions=np.array([1, 0, 0]),
        rejected=np.array([False, False, True]), reject_reason=np.array(["", "", "prompt_too_long"], dtype=object),
        token_times_s=np.array([1.0, 1.1, 1.3, 1.6, 2.0, 2.5]), token_offsets=np.array([0, 4, 6, 6]),
    )


def iterations():
    # Replica 0 runs a 2-stage pipeline (a prefill then a mixed batch); replica 1 one decode batch.
    return IterationRecords(
        replica_id=np.array([0, 0, 0, 0, 1]), stage=np.array([0, 1, 0, 1, 0]),
        start_s=np.array([0.5, 0.6, 0.9, 1.0, 1.95]), duration_s=np.array([0.1, 0.1, 0.1, 0.1, 0.05]),
        batch_size=np.array([1, 1, 2, 2, 1]), num_prefill_tokens=np.array([100, 100, 50, 50, 0]),
        num_decode_tokens=np.array([0, 0, 1, 1, 1]), kv_blocks_used=np.array([7, 7, 11, 11, 3]),
    )


@pytest.fixture
def written(tmp_path):
    records, iters = two_requests_and_a_rejection(), iterations()
    summary = summarize(records, iters, simulated_s=3.0, wall_s=0.5)
    paths = write_outputs(tmp_path / "run", records, iters, summary)
    return records, iters, summary, paths


def test_tables_are_zstd_compressed_and_the_trace_is_optional(written, tmp_path):
    import pyarrow.parquet as pq

    records, iters, summary, paths = written
    for name in ("requests.parquet", "iterations.parquet", "token_times.parquet"):
        assert pq.ParquetFile(paths[name]).metadata.row_group(0).column(0).compression == "ZSTD", name
    without = write_outputs(tmp_path / "no_trace", records, iters, summary, trace=False)
    assert "trace.json" not in without and not (tmp_path / "no_trace" / "trace.json").exists()


def test_files_and_tables_round_trip(written):
    records, _, summary, paths = written
    assert sorted(p.name for p in paths.values()) == [
        "iterations.parquet", "requests.parquet", "summary.json", "token_times.parquet", "trace.json"]
    pd.testing.assert_frame_equal(pd.read_parquet(paths["requests.parquet"]), request_table(records))
    assert paths["summary.json"].read_text() == summary_json(summary)

    iteration_rows = pd.read_parquet(paths["iterations.parquet"])
    assert iteration_rows["kind"].tolist() == ["prefill", "prefill", "mixed", "mixed", "decode"]
    np.testing.assert_allclose(iteration_rows["end_s"], [0.6, 0.7, 1.0, 1.1, 2.0])

    tokens = pd.read_parquet(paths["token_times.parquet"])
    assert tokens["request_id"].tolist() == [0, 0, 0, 0, 1, 1]
    assert tokens["token_index"].tolist() == [0, 1, 2, 3, 0, 1]
    # TBT gaps are recoverable from the token table.
    gaps = tokens.groupby("request_id")["time_s"].diff().dropna()
    np.testing.assert_allclose(gaps, [0.1, 0.2, 0.3, 0.5])


def test_perfetto_trace_has_one_process_per_replica_and_one_event_per_iteration(written):
    _, iters, _, paths = written
    trace = json.loads(paths["trace.json"].read_text())
    events = trace["traceEvents"]
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {(0, "replica 0"), (1, "replica 1")}
    threads = {(e["pid"], e["tid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert threads == {(0, 0, "stage 0"), (0, 1, "stage 1"), (1, 0, "stage 0")}

    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == len(iters.start_s)
    mixed = slices[2]
    assert (mixed["name"], mixed["pid"], mixed["tid"]) == ("mixed", 0, 0)
    assert mixed["ts"] == pytest.approx(0.9e6) and mixed["dur"] == pytest.approx(0.1e6)  # microseconds
    assert mixed["args"] == {"batch_size": 2, "prefill_tokens": 50, "decode_tokens": 1, "kv_blocks_used": 11}
    # One KV counter sample per stage-0 iteration.
    counters = [(e["pid"], e["args"]["blocks"]) for e in events if e["ph"] == "C"]
    assert counters == [(0, 7), (0, 11), (1, 3)]


def test_outputs_without_iterations(tmp_path):
    records = two_requests_and_a_rejection()
    paths = write_outputs(tmp_path, records, None, summarize(records, None, 3.0, 0.0))
    trace = json.loads(paths["trace.json"].read_text())
    assert trace["traceEvents"] == [] and len(pd.read_parquet(paths["iterations.parquet"])) == 0


def test_a_write_killed_midway_leaves_the_previous_file_whole(written, monkeypatch):

    records, iters, summary, paths = written
    before = paths["requests.parquet"].read_bytes()

    def killed_mid_write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(paths["requests.parquet"].parent, records, iters, summary)
    assert paths["requests.parquet"].read_bytes() == before
    assert not list(paths["requests.parquet"].parent.glob(".*.tmp"))
