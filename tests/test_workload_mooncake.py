"""Mooncake traces: the JSON-lines reader, its errors (file, line, field), and content through row selection."""
import json

import numpy as np
import pytest

from simulator.config import ConfigError
from simulator.paths import REPO_ROOT
from simulator.request import RequestState
from simulator.workload import TraceError, WorkloadConfig, load_workload, load_workload_config, read_trace

ROWS = [
    {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [0, 1]},
    {"timestamp": 250, "input_length": 1024, "output_length": 3, "hash_ids": [0, 1]},
    {"timestamp": 1500, "input_length": 100, "output_length": 7, "hash_ids": [9]},
]


def write(tmp_path, rows, name="trace.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def error_of(path, **kwargs):
    with pytest.raises(TraceError) as info:
        read_trace(str(path), **kwargs)
    return str(info.value)


def test_reads_arrivals_lengths_and_block_ids(tmp_path):
    trace = read_trace(str(write(tmp_path, ROWS)))
    assert trace.arrived_s.tolist() == [0.0, 0.25, 1.5]  # milliseconds -> seconds
    assert trace.prompt_tokens.tolist() == [1000, 1024, 100]
    assert trace.output_tokens.tolist() == [5, 3, 7]
    assert trace.content.unit_tokens == 512
    assert [k.tolist() for k in trace.content.keys] == [[0, 1], [0, 1], [9]]
    assert all(k.dtype == np.int64 for k in trace.content.keys)


def test_format_is_told_from_the_name_or_the_first_line(tmp_path):
    # Another suffix: the first line's keys tell; blank lines at the end are harmless.
    path = write(tmp_path, [*ROWS, "", ""], name="trace.log")
    assert read_trace(str(path)).prompt_tokens.tolist() == [1000, 1024, 100]
    assert read_trace(str(path), trace_format="mooncake").content is not None
    # A CSV is still a CSV, and a .jsonl file that is not Mooncake's says which field it lacks.
    csv = tmp_path / "t.csv"
    csv.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,3\n")
    assert read_trace(str(csv)).content is None
    other = write(tmp_path, [{"prompt": "hi"}], name="other.jsonl")
    assert error_of(other) == f"{other}, line 1, field timestamp: missing value (arrival time in milliseconds expected)"


def bad(field, value):
    """ROWS with line 2's `field` set to `value` (deleted when value is ...)."""
    row = dict(ROWS[1])
    if value is ...:
        del row[field]
    else:
        row[field] = value
    return [ROWS[0], row, ROWS[2]]


@pytest.mark.parametrize("rows, message", [
    (bad("input_length", ...), "line 2, field input_length: missing value (prompt tokens expected)"),
    (bad("input_length", 12.5), "line 2, field input_length: 12.5 is not a whole number (prompt tokens expected)"),
    (bad("input_length", "1024"), 'line 2, field input_length: "1024" is not a whole number'),
    (bad("input_length", 0), "line 2, field input_length: 0 tokens (a prompt needs at least one token)"),
    (bad("input_length", 2**40), "line 2, field input_length: 1099511627776 tokens is more than any request holds"),
    (bad("output_length", 0), "line 2, field output_length: 0 tokens (a request must generate at least one"),
    (bad("output_length", True), "line 2, field output_length: true is not a whole number (output tokens"),
    (bad("output_length", None), "line 2, field output_length: missing value (output tokens expected)"),
    (bad("timestamp", "noon"), 'line 2, field timestamp: "noon" is not a number (arrival time in milliseconds'),
    (bad("timestamp", ...), "line 2, field timestamp: missing value"),
    (bad("hash_ids", ...), "line 2, field hash_ids: missing value (a list of integer block ids expected)"),
    (bad("hash_ids", "0,1"), "line 2, field hash_ids: a JSON str, not a list of integer block ids"),
    (bad("hash_ids", [0, 1.5]), "line 2, field hash_ids: item 1 is 1.5, not an integer block id"),
    (bad("hash_ids", [0, 2**63]), "line 2, field hash_ids: item 1 is 9223372036854775808, not an integer"),
    (bad("hash_ids", [0, 1, 2]), ("line 2, field hash_ids: 3 block ids for input_length 1024, which needs "
                                  "ceil(1024 / 512) = 2 (one id per 512-token block, the last may be partial)")),
    ([ROWS[1], ROWS[0]], ("line 2, field timestamp: 0 is earlier than the previous line's 250; a trace must be "
                          "sorted by arrival time")),
    ([ROWS[0], "{not json", ROWS[2]], "line 2: not valid JSON"),
    ([ROWS[0], "[1, 2]", ROWS[2]], "line 2: a JSON list, not an object with fields"),
    ([ROWS[0], "", ROWS[2]], "line 2: blank line (a JSON object with fields"),
])
def test_each_bad_value_names_file_line_and_field(tmp_path, rows, message):
    path = write(tmp_path, rows)
    text = error_of(path)
    assert text.startswith(f"{path}, {message}"), text
    assert "\n" not in text


def test_an_empty_file_has_no_requests(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert error_of(path) == f"{path}: the Mooncake trace has no requests"


def test_content_follows_the_first_n_rows_and_replay_speed(tmp_path):
    path = str(write(tmp_path, ROWS))
    w = load_workload(WorkloadConfig(trace=path, num_requests=2, rate_scale=2.0), seed=0)
    assert w.arrived_s.tolist() == [0.0, 0.125]
    assert [k.tolist() for k in w.content.keys] == [[0, 1], [0, 1]]


def test_content_follows_shuffled_rows(tmp_path):
    # Every row's prompt length is its own, so each request's keys can be checked against its length.
    rows = [{"timestamp": i, "input_length": 512 * (i + 1), "output_length": i + 1,
             "hash_ids": list(range(100 * i, 100 * i + i + 1))} for i in range(6)]
    w = load_workload(WorkloadConfig(trace=str(write(tmp_path, rows)), arrival="poisson", rate_qps=1.0,
                                     num_requests=15), seed=3)
    assert len(w.content.keys) == 15
    for prompt, output, keys in zip(w.prompt_tokens, w.output_tokens, w.content.keys):
        row = prompt // 512 - 1
        assert output == row + 1 and keys.tolist() == rows[row]["hash_ids"]
    assert sorted(w.prompt_tokens[:6].tolist()) == [512 * (i + 1) for i in range(6)]  # one full pass first


def test_unshuffled_rows_keep_the_trace_order_with_synthetic_arrivals(tmp_path):
    rows = [{"timestamp": i, "input_length": 512 * (i + 1), "output_length": i + 1,
             "hash_ids": list(range(100 * i, 100 * i + i + 1))} for i in range(6)]
    path = str(write(tmp_path, rows))
    w = load_workload(WorkloadConfig(trace=path, arrival="poisson", rate_qps=1.0, shuffle_rows=False,
                                     num_requests=4), seed=3)
    assert w.prompt_tokens.tolist() == [512, 1024, 1536, 2048]
    assert [k.tolist() for k in w.content.keys] == [r["hash_ids"] for r in rows[:4]]
    with pytest.raises(ConfigError, match="only 6 requests to take in order"):
        load_workload(WorkloadConfig(trace=path, arrival="poisson", shuffle_rows=False, num_requests=7), seed=0)


def test_clipped_prompts_keep_the_keys_of_their_first_tokens(tmp_path):
    w = load_workload(WorkloadConfig(trace=str(write(tmp_path, ROWS)), max_prompt_tokens=600), seed=0)
    assert w.prompt_tokens.tolist() == [600, 600, 100]
    assert [k.tolist() for k in w.content.keys] == [[0, 1], [0, 1], [9]]  # 600 tokens: ceil(600/512) = 2
    w = load_workload(WorkloadConfig(trace=str(write(tmp_path, ROWS)), max_prompt_tokens=512), seed=0)
    assert [k.tolist() for k in w.content.keys] == [[0], [0], [9]]
    # Synthetic lengths say nothing of the trace's text.
    w = load_workload(WorkloadConfig(trace=str(write(tmp_path, ROWS)), lengths="uniform"), seed=0)
    assert w.content is None


@pytest.mark.parametrize("name, rows, mean_prompt", [
    ("mooncake_conversation", 12031, 12035.06), ("mooncake_synthetic", 3993, 15325.48),
])
def test_shipped_traces_and_their_yamls(name, rows, mean_prompt):
    cfg = load_workload_config(name)
    assert (REPO_ROOT / cfg.trace).is_file()
    w = load_workload(cfg, seed=0)
    assert len(w) == rows and len(w.content.keys) == rows
    assert w.prompt_tokens.mean() == pytest.approx(mean_prompt, abs=0.01)
    assert w.arrived_s[0] == 0 and np.all(np.diff(w.arrived_s) >= 0)
    assert all(len(k) == -(-p // 512) for k, p in zip(w.content.keys, w.prompt_tokens.tolist()))


def test_long_prompts_are_rejected_by_a_short_context_model_not_an_error():
    w = load_workload(load_workload_config("mooncake_conversation", num_requests=1000), seed=0)
    requests = RequestState.create(w.arrived_s, w.prompt_tokens, w.output_tokens, 8192, content=w.content)
    too_long = (w.prompt_tokens + w.output_tokens > 8192).sum()
    assert requests.rejected.sum() == too_long == 519


def test_gzipped_trace_reads_as_the_plain_one(tmp_path):
    import gzip

    rows = [{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [3, 4]},
            {"timestamp": 250, "input_length": 100, "output_length": 2, "hash_ids": [3]}]
    plain = write(tmp_path, rows)
    packed = tmp_path / "trace.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = read_trace(str(plain)), read_trace(str(packed))
    assert (a.prompt_tokens == b.prompt_tokens).all() and (a.arrived_s == b.arrived_s).all()
    assert [k.tolist() for k in b.content.keys] == [[3, 4], [3]]
