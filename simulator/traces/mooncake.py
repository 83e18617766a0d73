"""Mooncake traces (the kvcache-ai/Mooncake FAST'25 release): JSON lines, one request a line.

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, ..., 13]}

timestamp is milliseconds from the start of the trace; hash_ids name the prompt's 512-token blocks in
order (the last may be partial), remapped so that equal ids at the same position mean equal text: two
requests sharing their first k ids share a reusable KV prefix of k x 512 tokens. The reader returns those
ids as the requests' token content (simulator/content.py) in units of 512 tokens.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np

from simulator.content import TokenContent
from simulator.traces.common import MAX_TOKENS_PER_REQUEST, Trace, TraceError

MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
MOONCAKE_BLOCK_TOKENS = 512  # tokens each hash id stands for
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _open_text(path: Path, errors: str = "strict"):
    """The file as text; a name ending in .gz is read through gzip (the shipped traces are compressed)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors=errors)
    return path.open(encoding="utf-8-sig", errors=errors)


def looks_like_mooncake(path: Path) -> bool:
    """True for a .jsonl (or .jsonl.gz) file, or one whose first non-blank line is a JSON object with
    Mooncake's fields."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes[-1:] == [".jsonl"] or suffixes == [".jsonl", ".gz"]:
        return True
    with _open_text(path, errors="replace") as file:
        first = next((line for line in file if line.strip()), "").strip()
    if not first.startswith("{"):
        return False
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and any(field in row for field in MOONCAKE_FIELDS)


def read_mooncake_trace(path: Path) -> Trace:
    """Read a Mooncake JSON-lines trace, checking every row.

    Returns arrival seconds (timestamp / 1000), prompt and output token counts, and the content:
    TokenContent(512, one int64 array of hash ids per row). Raises TraceError naming the file, the 1-based
    line and the field of the first bad value: a line that is not a JSON object, a missing field, a token
    count that is not a whole number from 1 to MAX_TOKENS_PER_REQUEST, a timestamp that is not a number or
    is earlier than the line before, hash_ids that are not a list of integers, or a list whose length is
    not ceil(input_length / 512).
    """
    try:
        with _open_text(path) as file:
            lines = file.read().splitlines()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise TraceError(f"{path}: not a readable Mooncake trace ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()  # blank lines at the end are harmless
    if not lines:
        raise TraceError(f"{path}: the Mooncake trace has no requests")

    n = len(lines)
    timestamps_ms = np.empty(n, dtype=np.float64)
    prompt = np.empty(n, dtype=np.int64)
    output = np.empty(n, dtype=np.int64)
    keys: list[np.ndarray] = []
    for index, text in enumerate(lines):
        line = index + 1
        row = _json_object(text, path, line)
        timestamps_ms[index] = _timestamp_ms(row, path, line)
        if index and timestamps_ms[index] < timestamps_ms[index - 1]:
            raise TraceError(
                f"{path}, line {line}, field timestamp: {row['timestamp']} is earlier than the previous line's "
                f"{timestamps_ms[index - 1]:g}; a trace must be sorted by arrival time")
        prompt[index] = _token_count(row, "input_length", path, line, "prompt")
        output[index] = _token_count(row, "output_length", path, line, "output")
        keys.append(_hash_ids(row, int(prompt[index]), path, line))
    return Trace(path=path, arrived_s=timestamps_ms / 1000.0, prompt_tokens=prompt, output_tokens=output,
                 content=TokenContent(MOONCAKE_BLOCK_TOKENS, keys))


def _json_object(text: str, path: Path, line: int) -> dict:
    if not text.strip():
        raise TraceError(f"{path}, line {line}: blank line (a JSON object with fields {list(MOONCAKE_FIELDS)} "
                         f"expected)")
    try:
        row = json.loads(text)
    except ValueError as e:
        raise TraceError(f"{path}, line {line}: not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise TraceError(f"{path}, line {line}: a JSON {type(row).__name__}, not an object with fields "
                         f"{list(MOONCAKE_FIELDS)}")
    return row


def _field(row: dict, name: str, path: Path, line: int, expected: str):
    if name not in row or row[name] is None:
        raise TraceError(f"{path}, line {line}, field {name}: missing value ({expected} expected)")
    return row[name]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timestamp_ms(row: dict, path: Path, line: int) -> float:
    value = _field(row, "timestamp", path, line, "arrival time in milliseconds")
    if not _is_number(value) or not math.isfinite(value):
        raise TraceError(f"{path}, line {line}, field timestamp: {json.dumps(value)} is not a number "
                         f"(arrival time in milliseconds expected)")
    return float(value)


def _token_count(row: dict, name: str, path: Path, line: int, what: str) -> int:
    value = _field(row, name, path, line, f"{what} tokens")
    if not _is_number(value) or not math.isfinite(value) or value != math.floor(value):
        raise TraceError(f"{path}, line {line}, field {name}: {json.dumps(value)} is not a whole number "
                         f"({what} tokens expected)")
    count = int(value)
    if count > MAX_TOKENS_PER_REQUEST:
        raise TraceError(f"{path}, line {line}, field {name}: {count} tokens is more than any request holds "
                         f"(at most {MAX_TOKENS_PER_REQUEST:,}); a corrupt row?")
    if count < 1:
        why = "a request must generate at least one output token" if what == "output" else \
            "a prompt needs at least one token"
        raise TraceError(f"{path}, line {line}, field {name}: {count} tokens ({why})")
    return count


def _hash_ids(row: dict, prompt_tokens: int, path: Path, line: int) -> np.ndarray:
    expected = "a list of integer block ids"
    ids = _field(row, "hash_ids", path, line, expected)
    if not isinstance(ids, list):
        raise TraceError(f"{path}, line {line}, field hash_ids: a JSON {type(ids).__name__}, not {expected}")
    # One pass in C over the item types; the items are looked at one by one only to name a bad one.
    keys = None
    if set(map(type, ids)) <= {int}:
        try:
            keys = np.array(ids, dtype=np.int64)
        except OverflowError:
            pass
    if keys is None:
        position, value = next((i, v) for i, v in enumerate(ids)
                               if type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX)
        raise TraceError(f"{path}, line {line}, field hash_ids: item {position} is {json.dumps(value)}, "
                         f"not an integer block id")
    blocks = -(-prompt_tokens // MOONCAKE_BLOCK_TOKENS)
    if len(ids) != blocks:
        raise TraceError(
            f"{path}, line {line}, field hash_ids: {len(ids)} block ids for input_length {prompt_tokens}, "
            f"which needs ceil({prompt_tokens} / {MOONCAKE_BLOCK_TOKENS}) = {blocks} (one id per "
            f"{MOONCAKE_BLOCK_TOKENS}-token block, the last may be partial)")
    return keys
