"""Communication suite: message sizes, bus-bandwidth factors, and a real 2-process run over gloo (CPU)."""
import json

import pandas as pd
import pytest

from profiler.comm import bus_bandwidth_factor, calls_per_replay, message_sizes, run_comm
from profiler.schema import COMM_COLUMNS


def test_message_sizes_are_tokens_times_hidden_times_two():
    sizes = message_sizes(hidden_sizes=(4096, 8192), max_tokens=4)
    assert sizes == sorted({n * h * 2 for n in (1, 2, 3, 4) for h in (4096, 8192)})
    full = message_sizes()
    assert full[0] == 1 * 4096 * 2 and full[-1] == 16384 * 8192 * 2


def test_bus_bandwidth_factor_matches_nccl_tests():
    assert bus_bandwidth_factor("all_reduce", 2) == 1.0
    assert bus_bandwidth_factor("all_reduce", 8) == pytest.approx(1.75)
    assert bus_bandwidth_factor("send_recv", 8) == 1.0


def test_calls_per_replay_is_deterministic_and_bounded():
    assert calls_per_replay(8192) == calls_per_replay(8192) >= 16     # small: many back-to-back calls
    assert calls_per_replay(1 << 30) == 1
    assert all(1 <= calls_per_replay(s) <= 64 for s in message_sizes())


def test_gloo_run_writes_rows_and_skips_existing_ones(tmp_path):
    path = tmp_path / "cpu" / "comm" / "comm.csv"
    path.parent.mkdir(parents=True)
    # A row left by an earlier (interrupted) run: it must be kept, not measured again.
    path.write_text(",".join(COMM_COLUMNS) + "\nall_reduce,2,float32,256,123,120,130,10,2.08e-06,2.08e-06\n")
    run_comm(tmp_path, "cpu", sizes=[256, 4096], repeats=2, device_type="cpu", world_size=2)
    table = pd.read_csv(path)
    assert list(table.columns) == COMM_COLUMNS and len(table) == 4
    assert table.iloc[0].time_ms == 123
    assert sorted(zip(table.op, table.bytes)) == [("all_reduce", 256), ("all_reduce", 4096),
                                                  ("send_recv", 256), ("send_recv", 4096)]
    assert set(table.world_size) == {2} and (table.time_ms > 0).all()
    measured = table.iloc[1:]
    assert measured.algbw_gbps.tolist() == pytest.approx((measured.bytes / (measured.time_ms * 1e-3) / 1e9).tolist(),
                                                         rel=1e-3)
    meta = json.loads((tmp_path / "cpu" / "comm" / "meta.json").read_text())
    assert meta["check"]["all_reduce_sum_exact"] and meta["runs"][-1]["sizes_measured"] == 3
