"""The CSV trace formats (one request a row, detected from the header when trace_format=auto).

  vidur: num_prefill_tokens, num_decode_tokens, and optionally arrived_at (seconds). The processed
         Splitwise/Vidur files in data/traces/ use it.
  azure: TIMESTAMP (a datetime string), ContextTokens, GeneratedTokens: the raw Azure LLM inference
         traces (2023 and 2024). Arrivals are seconds since the first row.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from simulator.traces.common import MAX_TOKENS_PER_REQUEST, Trace, TraceError

CSV_FORMATS = ("vidur", "azure")

# Column names of each trace format: (arrival, prompt tokens, output tokens).
VIDUR_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read_csv_trace(path: Path, trace_format: str = "auto") -> Trace:
    """Read a vidur- or azure-format CSV trace (`trace_format` auto: told from the header), checking
    every row.

    Raises TraceError naming the file, the 1-based line (the header is line 1) and the column of the
    first bad value: a missing value, a token count that is not a whole number >= 1, or an arrival
    that is unparsable or earlier than the row before it.
    """
    header, rows = _read_csv(path)
    if not rows:
        raise TraceError(f"{path}: the trace has a header but no requests")
    columns = {}
    for index, name in enumerate(header):
        columns.setdefault(name, index)  # a repeated name means its first column

    fmt = _detect_format(path, header, trace_format)
    arrival_col, prompt_col, output_col = VIDUR_COLUMNS if fmt == "vidur" else AZURE_COLUMNS
    needed = (prompt_col, output_col) if fmt == "vidur" else (arrival_col, prompt_col, output_col)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TraceError(
            f"{path}: missing column(s) {missing} for the {fmt} trace format; expected "
            f"{_format_description(fmt)}; found {header}"
        )

    def texts(name: str) -> list[str]:
        index = columns[name]
        return [row[index] if index < len(row) else "" for row in rows]

    prompt = _token_counts(texts(prompt_col), path, prompt_col, "prompt")
    output = _token_counts(texts(output_col), path, output_col, "output")
    if arrival_col not in columns:
        arrived = None
    elif fmt == "vidur":
        arrived = _seconds_column(texts(arrival_col), path, arrival_col)
    else:
        arrived = _timestamp_column(texts(arrival_col), path, arrival_col)
    return Trace(path=path, arrived_s=arrived, prompt_tokens=prompt, output_tokens=output)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file; row i is on line i + 2 (a blank line is a row of missing values).

    Blank lines at the end of the file are harmless and dropped; blank lines inside it stay, so that
    they are reported as rows with missing values.
    """
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet exports write) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as file:
            lines = list(csv.reader(file))
    except (csv.Error, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not a readable CSV trace ({e})") from None
    if not lines:
        raise TraceError(f"{path}: not a readable CSV trace (No columns to parse from file)")
    # An empty name gets pandas' label for it, so the names in messages read as they always have.
    header = [name.strip() or f"Unnamed: {i}" for i, name in enumerate(lines[0])]
    rows = lines[1:]
    while rows and all(text in MISSING_TEXTS for text in rows[-1]):
        rows.pop()
    if rows and max(map(len, rows)) > len(header):
        row = next(i for i, fields in enumerate(rows) if len(fields) > len(header))
        raise TraceError(f"{path}: not a readable CSV trace (line {_line(row)} has {len(rows[row])} fields, "
                         f"the header {len(header)})")
    return header, rows


def _detect_format(path: Path, columns, trace_format: str) -> str:
    if trace_format != "auto":
        return trace_format
    if AZURE_COLUMNS[1] in columns or AZURE_COLUMNS[0] in columns:
        return "azure"
    if VIDUR_COLUMNS[1] in columns or VIDUR_COLUMNS[2] in columns:
        return "vidur"
    raise TraceError(
        f"{path}: cannot tell the trace format from the header {list(columns)}; expected either "
        f"{_format_description('vidur')} or {_format_description('azure')}, or a mooncake JSON-lines file"
    )


def _format_description(fmt: str) -> str:
    if fmt == "vidur":
        return "vidur columns [arrived_at (optional, seconds), num_prefill_tokens, num_decode_tokens]"
    return "azure columns [TIMESTAMP (datetime), ContextTokens, GeneratedTokens]"


def _line(row: int) -> int:
    return row + 2  # 1-based, and the header is line 1


# Texts that mean "no value": pandas.read_csv's defaults, which this reader replaced (same messages).
MISSING_TEXTS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})


def _is_missing(text: str) -> bool:
    return text in MISSING_TEXTS or text.isspace()


def _plain_numbers(texts: list[str]) -> bool:
    """False when a text has an underscore or a non-ASCII character: Python's int() and float() accept
    '1_000' and fullwidth digits, which a CSV number never has."""
    joined = "".join(texts)
    return joined.isascii() and "_" not in joined


def _integers(texts: list[str]) -> np.ndarray | None:
    """int64 values when every text is an integer, else None."""
    if _plain_numbers(texts):
        try:
            return np.fromiter(map(int, texts), np.int64, len(texts))
        except (ValueError, OverflowError):
            pass
    return None


def _floats(texts: list[str]) -> np.ndarray:
    """float64 values of the texts; NaN where a text is missing or not a number."""
    if _plain_numbers(texts):
        try:
            return np.fromiter(map(float, texts), np.float64, len(texts))
        except ValueError:
            pass  # some text is not a number: convert one at a time

    def number(text: str) -> float:
        if _is_missing(text) or not _plain_numbers([text]):
            return np.nan
        try:
            return float(text)
        except ValueError:
            return np.nan

    return np.fromiter(map(number, texts), np.float64, len(texts))


def _shown(texts: list[str], numbers: np.ndarray, row: int) -> str:
    """A bad value as messages quote it: a column of numbers (missing values aside) shows the number as
    a float ('12.5', '2.0'), any other column the text itself."""
    numeric = all(not np.isnan(x) or _is_missing(t) for t, x in zip(texts, numbers))
    return str(numbers[row]) if numeric else texts[row]


def _token_counts(texts: list[str], path: Path, name: str, what: str) -> np.ndarray:
    """The column as int64, or TraceError at the first value that is not a whole number from 1 to
    MAX_TOKENS_PER_REQUEST."""
    values = _integers(texts)
    if values is None:
        numbers = _floats(texts)
        bad = ~np.isfinite(numbers) | (numbers != np.floor(numbers))
        if bad.any():
            row = int(np.argmax(bad))
            if _is_missing(texts[row]):
                problem = "missing value"
            else:
                problem = f"'{_shown(texts, numbers, row)}' is not a whole number"
            raise TraceError(f"{path}, line {_line(row)}, column {name}: {problem} ({what} tokens expected)")
    # Range checks before the cast to int64, which would wrap a count beyond it into a negative one.
    counts = numbers if values is None else values
    too_large = counts > MAX_TOKENS_PER_REQUEST
    if too_large.any():
        row = int(np.argmax(too_large))
        raise TraceError(f"{path}, line {_line(row)}, column {name}: {texts[row].strip()} tokens is more than "
                         f"any request holds (at most {MAX_TOKENS_PER_REQUEST:,}); a corrupt row?")
    too_small = counts < 1
    if too_small.any():
        row = int(np.argmax(too_small))
        why = "a request must generate at least one output token" if what == "output" else "a prompt needs at least one token"
        raise TraceError(f"{path}, line {_line(row)}, column {name}: {int(counts[row])} tokens ({why})")
    return values if values is not None else numbers.astype(np.int64)


def _seconds_column(texts: list[str], path: Path, name: str) -> np.ndarray:
    """Arrival times in seconds, checked to be numbers in non-decreasing order."""
    numbers = _floats(texts)
    bad = ~np.isfinite(numbers)
    if bad.any():
        row = int(np.argmax(bad))
        problem = "missing value" if _is_missing(texts[row]) else f"'{_shown(texts, numbers, row)}' is not a number"
        raise TraceError(f"{path}, line {_line(row)}, column {name}: {problem} (arrival time in seconds expected)")

    def shown(row: int) -> str:  # as a column of numbers: '2' if every value is an integer, else '2.0'
        integers = _integers(texts)
        return str(numbers[row] if integers is None else integers[row])

    _check_sorted(numbers, shown, path, name)
    return numbers


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)  # a time without a zone is UTC
_MICROSECOND = timedelta(microseconds=1)
# Digits 7 to 9 of a fraction of a second. datetime keeps six; the Azure 2023 traces write seven, and the
# pandas reader this one replaced kept nanoseconds, so they still count.
_SUB_MICROSECOND = re.compile(r"[.,]\d{6}(\d{1,3})")


def _microseconds(text: str) -> int | None:
    """ISO 8601 text -> whole microseconds since 1970 UTC; None if unparsable."""
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return (stamp - (_EPOCH_NAIVE if stamp.tzinfo is None else _EPOCH_UTC)) // _MICROSECOND


def _timestamp_column(texts: list[str], path: Path, name: str) -> np.ndarray:
    """Datetime strings -> seconds since the first row. Time zones are honoured; naive times are UTC."""
    stamps_us = [_microseconds(text) for text in texts]
    if None in stamps_us:
        row = stamps_us.index(None)
        problem = "missing value" if _is_missing(texts[row]) else f"cannot parse '{texts[row]}' as a datetime"
        raise TraceError(
            f"{path}, line {_line(row)}, column {name}: {problem} (expected e.g. 2023-11-16 18:15:46.6805900)"
        )
    elapsed_ns = (np.array(stamps_us, dtype=np.int64) - stamps_us[0]) * 1000
    if _SUB_MICROSECOND.search("\n".join(texts)):
        extra_ns = np.array([int(m[1].ljust(3, "0")) if (m := _SUB_MICROSECOND.search(text)) else 0
                             for text in texts], dtype=np.int64)
        elapsed_ns += extra_ns - extra_ns[0]
    # Whole seconds plus the rest, added as pandas' total_seconds() adds them, so arrivals are bit for bit
    # those of the pandas reader (up to 104 days from the first row: beyond 2**53 ns pandas nudges a few
    # values by one ulp).
    whole_s, rest_ns = np.divmod(elapsed_ns, 10**9)
    arrived = whole_s + rest_ns / 1e9
    _check_sorted(arrived, lambda row: texts[row], path, name)
    return arrived


def _check_sorted(arrived: np.ndarray, shown: Callable[[int], str], path: Path, name: str) -> None:
    """TraceError at the first arrival earlier than the row before it; `shown(row)` quotes a value."""
    earlier = np.diff(arrived) < 0
    if earlier.any():
        row = int(np.argmax(earlier)) + 1
        raise TraceError(
            f"{path}, line {_line(row)}, column {name}: '{shown(row)}' is earlier than the previous "
            f"row's '{shown(row - 1)}'; a trace must be sorted by arrival time"
        )
