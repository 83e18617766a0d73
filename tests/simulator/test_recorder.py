"""The recorder expands its per-event log into per-token times, request by request."""
import numpy as np
import pytest

from simulator.recorder import Recorder


def logged():
    rec = Recorder(kv_block_size=4)
    rec.emit(np.array([2, 0]), 10)  # requests 2 and 0 emit at 10 ns
    rec.emit_run(np.array([0, 2, 3]), np.array([20, 30, 40]))  # a decode run of three steps
    rec.emit(np.array([3]), 55)
    rec.emit(np.array([1]), 60)
    return rec


@pytest.mark.parametrize("pairs_per_chunk", [1, 2, 1000])
def test_token_times_by_request_in_time_order(pairs_per_chunk):
    times, offsets = logged().token_times(5, pairs_per_chunk=pairs_per_chunk)
    assert offsets.tolist() == [0, 4, 5, 9, 13, 13]  # request 4 emitted nothing
    assert (times * 1e9).round().astype(int).tolist() == [10, 20, 30, 40, 60, 10, 20, 30, 40, 20, 30, 40, 55]


def test_iteration_rows_and_decode_runs_are_merged_in_time_order():
    rec = Recorder(kv_block_size=4)
    rec.add_iteration(0, 0, 0, 100, 2, 30, 0, 5)
    # Two requests with 1 and 4 spare slots: at the run's steps 2 and 5 they need new blocks.
    rec.add_decode_run(0, 100, np.array([200, 300, 400, 500, 600]), 2, 5, np.array([1, 4]))
    rec.add_iteration(1, 0, 50, 100, 1, 7, 0, 1)
    it = rec.pop_iteration_records()
    assert (it.start_s * 1e9).round().astype(int).tolist() == [0, 50, 100, 200, 300, 400, 500]
    assert it.replica_id.tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert it.kv_blocks_used.tolist() == [5, 1, 5, 6, 6, 6, 7]
    assert it.num_decode_tokens.tolist() == [0, 0, 2, 2, 2, 2, 2]
