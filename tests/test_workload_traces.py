"""Trace readers: the two CSV formats, and errors that name the file, line and column."""
import re

import numpy as np
import pytest

from simulator.config import ConfigError
from simulator.workload import TraceError, WorkloadConfig, load_workload, read_trace


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, **kwargs):
    with pytest.raises(TraceError) as info:
        read_trace(str(path), **kwargs)
    return str(info.value)


def test_vidur_format_with_and_without_arrivals(tmp_path):
    path = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,10,3\n1.25,20,4\n")
    trace = read_trace(str(path))
    assert trace.arrived_s.tolist() == [0.5, 1.25]
    assert trace.prompt_tokens.tolist() == [10, 20] and trace.output_tokens.tolist() == [3, 4]
    # Replay shifts the first arrival to 0.
    w = load_workload(WorkloadConfig(trace=str(path)), seed=0)
    assert w.arrived_s.tolist() == [0.0, 0.75]

    lengths_only = write(tmp_path, "num_prefill_tokens,num_decode_tokens,extra\n10,3,x\n20,4,y\n", "l.csv")
    trace = read_trace(str(lengths_only))
    assert trace.arrived_s is None and trace.prompt_tokens.tolist() == [10, 20]


def test_azure_format_seconds_since_first_row(tmp_path):
    path = write(tmp_path, (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:47.0000000,396,109\n"
        "2023-11-16 18:16:47,100,1\n"
    ))
    trace = read_trace(str(path))
    np.testing.assert_allclose(trace.arrived_s, [0.0, 0.31941, 60.31941], atol=1e-6)
    assert trace.prompt_tokens.tolist() == [374, 396, 100] and trace.output_tokens.tolist() == [44, 109, 1]
    # The 2024 traces carry a time zone.
    zoned = write(tmp_path, (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,2579,10\n2024-05-10 00:00:01.5+00:00,30,2\n"
    ), "zoned.csv")
    np.testing.assert_allclose(read_trace(str(zoned)).arrived_s, [0.0, 1.49007], atol=1e-9)


HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


@pytest.mark.parametrize("rows,line,column,problem", [
    ("0,10,3\n1,,4\n", 3, "num_prefill_tokens", "missing value"),
    ("0,10,3\n1,20,4\n2,12.5,4\n", 4, "num_prefill_tokens", "'12.5' is not a whole number"),
    ("0,10,3\n1,20,abc\n", 3, "num_decode_tokens", "'abc' is not a whole number"),
    ("0,-5,3\n", 2, "num_prefill_tokens", "-5 tokens"),
    ("0,10,3\n1,20,0\n", 3, "num_decode_tokens", "at least one output token"),
    ("0,10,3\n2,20,4\n1.5,30,5\n", 4, "arrived_at", "'1.5' is earlier than the previous row's '2.0'"),
    ("0,10,3\nsoon,20,4\n", 3, "arrived_at", "'soon' is not a number"),
    ("0,10,3\n\n2,20,4\n", 3, "num_prefill_tokens", "missing value"),  # a blank line inside the file
    ("0,10,3\n1,NA,4\n", 3, "num_prefill_tokens", "missing value"),  # pandas' missing-value words
    ("0,10,3\n1,nan,4\n", 3, "num_prefill_tokens", "missing value"),
    ("0,10,3\n1,1_000,4\n", 3, "num_prefill_tokens", "'1_000' is not a whole number"),
    ("0,10,3\n1,20,inf\n", 3, "num_decode_tokens", "'inf' is not a whole number"),
    ("0,10,3\n2,20,4\n1,30,5\n", 4, "arrived_at", "'1' is earlier than the previous row's '2'"),  # whole seconds
    # Counts no request has: 2**63 - 1 fits int64 but overflowed prompt + output; beyond int64 the count
    # was cast to -9223372036854775808.
    ("0,10,3\n1,9223372036854775807,4\n", 3, "num_prefill_tokens",
     "9223372036854775807 tokens is more than any request holds (at most 2,147,483,647)"),
    ("0,10,3\n1,20,100000000000000000000\n", 3, "num_decode_tokens", "100000000000000000000 tokens is more than"),
    ("0,10,3\n1,2147483648.0,4\n", 3, "num_prefill_tokens", "2147483648.0 tokens is more than"),
    ("0,10,3\n1,-100000000000000000000,4\n", 3, "num_prefill_tokens", "-100000000000000000000 tokens (a prompt"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, rows, line, column, problem):
    path = write(tmp_path, HEADER + rows)
    message = error_of(path)
    assert message.startswith(f"{path}, line {line}, column {column}: ")
    assert problem in message


def test_azure_bad_timestamp_names_line(tmp_path):
    path = write(tmp_path, (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47.1,10,1\n16/11/2023 noon,396,109\n"
    ))
    message = error_of(path)
    assert message.startswith(f"{path}, line 4, column TIMESTAMP: cannot parse '16/11/2023 noon'")


def test_trailing_blank_lines_are_fine(tmp_path):
    path = write(tmp_path, HEADER + "0,10,3\n1,20,4\n\n\n")
    assert read_trace(str(path)).prompt_tokens.tolist() == [10, 20]


def test_missing_file_and_missing_columns(tmp_path):
    message = error_of(tmp_path / "nope.csv")
    assert "no trace file" in message and "nope.csv" in message

    path = write(tmp_path, "arrived_at,num_prefill_tokens\n0,10\n")
    message = error_of(path)
    assert re.search(r"missing column\(s\) \['num_decode_tokens'\] for the vidur trace format", message)
    assert str(path) in message

    azure = write(tmp_path, "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,10\n", "azure.csv")
    assert "missing column(s) ['GeneratedTokens'] for the azure trace format" in error_of(azure)
    # Forcing the wrong format says which columns it wanted.
    assert "missing column(s) ['num_prefill_tokens', 'num_decode_tokens'] for the vidur" in error_of(
        azure, trace_format="vidur")
    unknown = write(tmp_path, "a,b\n1,2\n", "unknown.csv")
    assert "cannot tell the trace format" in error_of(unknown)
    empty = write(tmp_path, HEADER, "empty.csv")
    assert "no requests" in error_of(empty)


def test_trace_errors_are_config_errors(tmp_path):
    # The CLI reports ConfigError cleanly; TraceError is one.
    path = write(tmp_path, HEADER + "0,10,0\n")
    with pytest.raises(ConfigError, match="line 2, column num_decode_tokens"):
        load_workload(WorkloadConfig(trace=str(path)), seed=0)


def test_azure_timestamps_keep_sub_microsecond_digits_and_zones(tmp_path):
    # The 2023 traces write seven digits of a second; the seventh (100 ns) still counts.
    path = write(tmp_path, (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:46.6805901,396,109\n"
        "2023-11-16T18:15:47Z,10,1\n"  # an explicit UTC zone, like a naive time
        "2023-11-16 19:15:48+01:00,10,1\n"  # another zone: one hour ahead, so 18:15:48 UTC
    ))
    assert read_trace(str(path)).arrived_s.tolist() == [0.0, 100 / 1e9, 0 + 319410000 / 1e9, 1 + 319410000 / 1e9]


def test_whole_number_text_forms_and_csv_details(tmp_path):
    # Quoted fields, a byte-order mark, padded and float-written whole numbers, Windows line ends.
    path = tmp_path / "t.csv"
    path.write_bytes(("\ufeff" + HEADER + '0,"10",3\r\n1.5, 20 ,4.0\r\n2,1e3,+5\r\n').encode())
    trace = read_trace(str(path))
    assert trace.arrived_s.tolist() == [0.0, 1.5, 2.0]
    assert trace.prompt_tokens.tolist() == [10, 20, 1000] and trace.output_tokens.tolist() == [3, 4, 5]
    assert trace.prompt_tokens.dtype == np.int64 and trace.arrived_s.dtype == np.float64

    extra_field = write(tmp_path, HEADER + "0,10,3\n1,20,4,5\n", "extra.csv")
    assert "line 3 has 4 fields, the header 3" in error_of(extra_field)
    assert "not a readable CSV trace" in error_of(write(tmp_path, "", "blank.csv"))


def test_the_largest_count_a_request_may_have_is_read_and_rejected_by_the_model_not_the_reader(tmp_path):
    from simulator.request import RequestState
    from simulator.workload import MAX_TOKENS_PER_REQUEST

    path = write(tmp_path, HEADER + f"0,10,3\n1,{MAX_TOKENS_PER_REQUEST},{MAX_TOKENS_PER_REQUEST}\n")
    trace = read_trace(str(path))
    assert trace.prompt_tokens.tolist() == [10, MAX_TOKENS_PER_REQUEST]
    requests = RequestState.create(trace.arrived_s, trace.prompt_tokens, trace.output_tokens, 8192)
    assert requests.reject_reason.tolist() == ["", "prompt + output tokens exceed max_model_len=8192"]
