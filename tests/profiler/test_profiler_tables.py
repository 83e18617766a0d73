"""Resumable CSV tables: flush per row, skip existing keys, drop a half-written row, refuse a wrong layout,
rest gzipped between runs."""
import gzip

import pandas as pd
import pytest

from profiler.schema import OPS_COLUMNS
from profiler.tables import ResumableCsv, TableError, format_value, ops_key, read_json, write_json


def row(tp, op, n, t=1.0):
    return {"tp": tp, "op": op, "num_tokens": n, "time_ms": t, "p10_ms": t, "p90_ms": t, "repeats": 10,
            "flops": 2.0 * n, "bytes": 3.0 * n, "tflops": 0.1, "tbps": 0.2}


def test_rows_are_on_disk_after_each_append_and_reload(tmp_path):
    path = tmp_path / "ops.csv"
    table = ResumableCsv(path, OPS_COLUMNS, ops_key)
    table.append(row(1, "rmsnorm", 8))
    assert path.read_text().count("\n") == 2                       # header + row, already flushed
    table.append(row(1, "rmsnorm", 8, t=9.0))                      # same key: ignored
    table.append(row(2, "rmsnorm", 8))
    again = ResumableCsv(path, OPS_COLUMNS, ops_key)
    assert again.keys == {(1, "rmsnorm", 8), (2, "rmsnorm", 8)}
    assert float(again.find((1, "rmsnorm", 8))["time_ms"]) == 1.0


def test_half_written_last_row_is_dropped(tmp_path):
    path = tmp_path / "ops.csv"
    table = ResumableCsv(path, OPS_COLUMNS, ops_key)
    table.append(row(1, "act", 4))
    with path.open("a") as f:
        f.write("1,act,8,0.5")                                      # killed mid-row: no newline
    again = ResumableCsv(path, OPS_COLUMNS, ops_key)
    assert again.keys == {(1, "act", 4)}
    again.append(row(1, "act", 8))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("1,act,8,1,")


def test_wrong_header_names_the_file(tmp_path):
    path = tmp_path / "ops.csv"
    path.write_text("tp,op,time_ms\n1,act,2\n")
    with pytest.raises(TableError, match="ops.csv"):
        ResumableCsv(path, OPS_COLUMNS, ops_key)


def test_short_row_is_an_error_with_line_number(tmp_path):
    path = tmp_path / "ops.csv"
    path.write_text(",".join(OPS_COLUMNS) + "\n1,act\n")
    with pytest.raises(TableError, match=r"ops.csv:2"):
        ResumableCsv(path, OPS_COLUMNS, ops_key)


def test_format_and_json_round_trip(tmp_path):
    assert format_value(0.1234567891) == "0.123457" and format_value(3) == "3" and format_value("x") == "x"
    write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert read_json(tmp_path / "m.json") == {"a": [1, 2]} and read_json(tmp_path / "none.json") == {}


def test_compressed_table_rests_gzipped_and_resumes_from_either_file(tmp_path):
    path = tmp_path / "ops.csv"
    with ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True) as table:
        table.append(row(1, "act", 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.csv.gz"]

    killed = ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True)     # unpacked to append to
    assert killed.keys == {(1, "act", 4)} and sorted(p.name for p in tmp_path.iterdir()) == ["ops.csv"]
    killed.append(row(1, "act", 8))                                         # ...and never closed
    with ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True) as again:
        assert again.keys == {(1, "act", 4), (1, "act", 8)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.csv.gz"]
    assert pd.read_csv(tmp_path / "ops.csv.gz").num_tokens.tolist() == [4, 8]

    # Packing the same rows again gives the same bytes: a rerun that measures nothing changes no file.
    packed = (tmp_path / "ops.csv.gz").read_bytes()
    with ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True):
        pass
    assert (tmp_path / "ops.csv.gz").read_bytes() == packed


def test_plain_file_beside_the_gz_must_continue_its_rows(tmp_path):
    path = tmp_path / "ops.csv"
    with ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True) as table:
        table.append(row(1, "act", 4))
    # The .gz restored (say by git) beside the plain file of a killed run that went on from it.
    packed = gzip.decompress((tmp_path / "ops.csv.gz").read_bytes()).decode()
    path.write_text(packed + "1,act,8,1,1,1,10,16,24,0.1,0.2\n")
    with ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True) as table:
        assert table.keys == {(1, "act", 4), (1, "act", 8)}
    path.write_text(",".join(OPS_COLUMNS) + "\n1,act,16,1,1,1,10,32,48,0.1,0.2\n")
    with pytest.raises(TableError, match=r"ops\.csv and .*ops\.csv\.gz both exist"):
        ResumableCsv(path, OPS_COLUMNS, ops_key, compressed=True)
