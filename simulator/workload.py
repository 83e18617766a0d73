"""Where requests come from: trace readers and synthetic generators.

`load_workload(cfg, seed)` turns a `WorkloadConfig` into a `Workload`: three aligned arrays of
arrival times and prompt/output lengths, sorted by arrival. It knows nothing about the model (the
simulator rejects requests that do not fit). Arrivals and lengths are chosen independently:

    arrival = trace | poisson | gamma | fixed      lengths = trace | uniform | zipf

so "arXiv lengths with Poisson arrivals at 2 req/s" is `trace=<arxiv csv> arrival=poisson rate_qps=2`.

Trace formats (CSV, one request a row, detected from the header when trace_format=auto):
  vidur: num_prefill_tokens, num_decode_tokens, and optionally arrived_at (seconds). The processed
         Splitwise/Vidur files in data/traces/ use it.
  azure: TIMESTAMP (a datetime string), ContextTokens, GeneratedTokens: the raw Azure LLM inference
         traces (2023 and 2024). Arrivals are seconds since the first row.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from simulator.config import ConfigError, _load_yaml, from_dict
from simulator.content import TokenContent
from simulator.paths import REPO_ROOT

ARRIVALS = ("trace", "poisson", "gamma", "fixed")
LENGTHS = ("trace", "uniform", "zipf")
TRACE_FORMATS = ("auto", "vidur", "azure")

# The most tokens a prompt or an output may have. Far beyond any model's context, and small enough that
# sums over billions of requests fit int64: a larger count in a trace is a corrupt row, not a request.
MAX_TOKENS_PER_REQUEST = 2**31 - 1

# Column names of each trace format: (arrival, prompt tokens, output tokens).
VIDUR_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ConfigError):
    """A trace file is missing or malformed; the message names the file, line and column."""


@dataclass
class WorkloadConfig:
    """The `workload` config group (conf/workload/*.yaml). See docs/workload_and_metrics.md.

    Field groups:
      source     name, trace, trace_format, num_requests
      arrivals   arrival, rate_scale (trace replay), rate_qps and interarrival_cv (synthetic)
      lengths    lengths, min_tokens/max_tokens/prefill_decode_ratio (synthetic), zipf_theta
      clipping   max_prompt_tokens, max_output_tokens
    """

    # Label written into results; "" derives one from the trace and arrival process.
    name: str = ""
    # CSV trace, absolute or relative to the repository root (then to the working directory).
    # Needed when arrival=trace or lengths=trace; ignored otherwise.
    trace: str | None = "data/traces/splitwise_conv.csv"
    trace_format: str = "auto"  # auto | vidur | azure
    # None: every trace row (required for fully synthetic workloads); N: the first N requests.
    num_requests: int | None = None
    arrival: str = "trace"  # trace | poisson | gamma | fixed
    # arrival=trace only: 2.0 replays the trace twice as fast (arrival times divided by 2).
    rate_scale: float = 1.0
    # Synthetic arrivals: mean requests per second.
    rate_qps: float = 1.0
    # arrival=gamma: coefficient of variation (std / mean) of the gaps between arrivals. 1 is as
    # bursty as Poisson, 2-4 bursty, below 1 more regular. Gamma shape = 1 / cv**2 (vLLM's
    # benchmark `--burstiness` is that shape).
    interarrival_cv: float = 1.0
    lengths: str = "trace"  # trace | uniform | zipf
    # Synthetic lengths (as Vidur): total = prompt + output tokens is drawn from
    # [min_tokens, max_tokens], then split so prompt_tokens / output_tokens ~ prefill_decode_ratio.
    min_tokens: int = 64
    max_tokens: int = 4096
    prefill_decode_ratio: float = 4.0
    # lengths=zipf: P(k-th smallest total) ~ 1 / k**zipf_theta; 0 is uniform, larger favours short.
    zipf_theta: float = 0.6
    # Clip longer requests to these lengths (None: keep as they are). Useful to replay a trace
    # with a model whose context is shorter than the trace's longest requests.
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None


@dataclass
class Workload:
    """Requests to simulate, sorted by arrival; arrays are aligned (row i is request i)."""

    name: str
    arrived_s: np.ndarray  # float64, seconds from the start of the run (first request at 0)
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    # What the requests' tokens are (simulator/content.py), for prefix caching; None when the source
    # says only how long they are (then no two requests share a prefix).
    content: TokenContent | None = None

    def __len__(self) -> int:
        return len(self.arrived_s)


@dataclass
class Trace:
    """A trace file's contents; `arrived_s` is None when the file has lengths only."""

    path: Path
    arrived_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray


def load_workload_config(name: str, **overrides) -> WorkloadConfig:
    """Read conf/workload/<name>.yaml (without Hydra), then apply `overrides` (field=value)."""
    path, values = _load_yaml("workload", name)
    return from_dict(WorkloadConfig, {**values, **overrides}, str(path))


def trace_file_name(cfg: WorkloadConfig) -> str | None:
    """The file name of the trace the workload reads (arrivals or lengths), None when it reads none."""
    return Path(cfg.trace).name if cfg.trace and "trace" in (cfg.arrival, cfg.lengths) else None


def describe_source(cfg: WorkloadConfig) -> str:
    """Where the requests come from, in words, for run headers: "trace splitwise_conv.csv",
    "trace splitwise_conv.csv replayed 4x as fast", "lengths from arxiv.csv, poisson arrivals at 3 req/s",
    "uniform lengths, gamma arrivals at 4 req/s (cv 2)". The workload's name alone hides a swapped trace."""
    trace = trace_file_name(cfg)
    if cfg.arrival == "trace":
        return f"trace {trace}" + (f" replayed {cfg.rate_scale:g}x as fast" if cfg.rate_scale != 1.0 else "")
    lengths = f"lengths from {trace}" if cfg.lengths == "trace" else f"{cfg.lengths} lengths"
    burstiness = f" (cv {cfg.interarrival_cv:g})" if cfg.arrival == "gamma" else ""
    return f"{lengths}, {cfg.arrival} arrivals at {cfg.rate_qps:g} req/s{burstiness}"


def load_workload(cfg: WorkloadConfig, seed: int) -> Workload:
    """Build the requests `cfg` describes; the same (cfg, seed) always gives the same workload.

    Arrivals and lengths draw from separate random streams, so changing the length settings does
    not move the arrival times and vice versa.
    """
    _validate(cfg)
    arrival_rng, length_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    trace = read_trace(cfg.trace, cfg.trace_format) if "trace" in (cfg.arrival, cfg.lengths) else None
    n = _num_requests(cfg, trace)

    if cfg.arrival == "trace":
        if trace.arrived_s is None:
            raise ConfigError(
                f"workload.arrival=trace but {trace.path} has no arrival times (no column "
                f"'{VIDUR_COLUMNS[0]}'); use workload.arrival=poisson|gamma|fixed with workload.rate_qps"
            )
        arrived = trace.arrived_s[:n] - trace.arrived_s[0]
        arrived_s = arrived / cfg.rate_scale if cfg.rate_scale != 1.0 else arrived
    else:
        arrived_s = synthetic_arrivals_s(cfg.arrival, n, cfg.rate_qps, cfg.interarrival_cv, arrival_rng)

    if cfg.lengths == "trace":
        if cfg.arrival == "trace":
            prompt, output = trace.prompt_tokens[:n], trace.output_tokens[:n]
        else:  # lengths without their own arrival times: a seeded shuffle of the trace's rows
            rows = _shuffled_rows(len(trace.prompt_tokens), n, length_rng)
            prompt, output = trace.prompt_tokens[rows], trace.output_tokens[rows]
    else:
        prompt, output = synthetic_lengths(
            cfg.lengths, n, cfg.min_tokens, cfg.max_tokens, cfg.prefill_decode_ratio, cfg.zipf_theta,
            length_rng,
        )
    if cfg.max_prompt_tokens is not None:
        prompt = np.minimum(prompt, cfg.max_prompt_tokens)
    if cfg.max_output_tokens is not None:
        output = np.minimum(output, cfg.max_output_tokens)
    return Workload(
        name=cfg.name or _default_name(cfg),
        arrived_s=np.ascontiguousarray(arrived_s, dtype=np.float64),
        prompt_tokens=np.ascontiguousarray(prompt, dtype=np.int64),
        output_tokens=np.ascontiguousarray(output, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- synthetic generators


def synthetic_arrivals_s(
    process: str, n: int, rate_qps: float, interarrival_cv: float, rng: np.random.Generator
) -> np.ndarray:
    """`n` arrival times (s), the first at 0, with gaps of mean 1 / rate_qps.

    poisson: exponential gaps; gamma: gamma gaps with std/mean = interarrival_cv; fixed: equal gaps.
    """
    mean_gap_s = 1.0 / rate_qps
    if process == "poisson":
        gaps = rng.exponential(mean_gap_s, n - 1)
    elif process == "gamma":
        shape = 1.0 / interarrival_cv**2
        gaps = rng.gamma(shape, mean_gap_s / shape, n - 1)
    elif process == "fixed":
        return np.arange(n, dtype=np.float64) * mean_gap_s
    else:
        raise ConfigError(f"workload.arrival: unknown '{process}'; expected one of {ARRIVALS}")
    arrived = np.empty(n, dtype=np.float64)
    arrived[0] = 0.0
    np.cumsum(gaps, out=arrived[1:])
    return arrived


def synthetic_lengths(
    distribution: str,
    n: int,
    min_tokens: int,
    max_tokens: int,
    prefill_decode_ratio: float,
    zipf_theta: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, output_tokens), each int64 of length n, with prompt + output in
    [min_tokens, max_tokens] and both >= 1.

    uniform: every total equally likely. zipf: the k-th smallest total has probability
    proportional to 1 / k**zipf_theta (bounded Zipf). The total is split as
    output = round(total / (1 + prefill_decode_ratio)).
    """
    if distribution == "uniform":
        total = rng.integers(min_tokens, max_tokens + 1, n, dtype=np.int64)
    elif distribution == "zipf":
        ranks = np.arange(1, max_tokens - min_tokens + 2, dtype=np.float64)
        cdf = np.cumsum(ranks**-zipf_theta)
        cdf /= cdf[-1]
        # Inverse-CDF sampling: O(n log k) and no per-sample Python work.
        total = min_tokens + np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)
        np.minimum(total, max_tokens, out=total)  # guards the rounding of cdf[-1] to 1.0
    else:
        raise ConfigError(f"workload.lengths: unknown '{distribution}'; expected one of {LENGTHS}")
    output = np.rint(total / (1.0 + prefill_decode_ratio)).astype(np.int64)
    np.clip(output, 1, total - 1, out=output)
    return total - output, output


def _shuffled_rows(num_rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n row indices: a fresh random permutation of all rows for every pass over the trace."""
    passes = -(-n // num_rows)
    return np.concatenate([rng.permutation(num_rows) for _ in range(passes)])[:n]


# ----------------------------------------------------------------------------- trace readers


def resolve_trace_path(trace: str) -> Path:
    """An absolute path as is; a relative one under the repository root, else the working directory."""
    path = Path(trace).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [REPO_ROOT / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise TraceError(f"workload.trace: no trace file '{trace}' (looked for {tried})")


def read_trace(trace: str | None, trace_format: str = "auto") -> Trace:
    """Read a vidur- or azure-format CSV trace, checking every row.

    Raises TraceError naming the file, the 1-based line (the header is line 1) and the column of the
    first bad value: a missing value, a token count that is not a whole number >= 1, or an arrival
    that is unparsable or earlier than the row before it.
    """
    if not trace:
        raise ConfigError("workload.trace is empty, but workload.arrival or workload.lengths is 'trace'")
    path = resolve_trace_path(trace)
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
        f"{_format_description('vidur')} or {_format_description('azure')}"
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


# ----------------------------------------------------------------------------- config checks


def _validate(cfg: WorkloadConfig) -> None:
    """Raise ConfigError naming the first field with an impossible value."""
    checks = [
        (cfg.arrival in ARRIVALS, "arrival", f"one of {ARRIVALS}"),
        (cfg.lengths in LENGTHS, "lengths", f"one of {LENGTHS}"),
        (cfg.trace_format in TRACE_FORMATS, "trace_format", f"one of {TRACE_FORMATS}"),
        (cfg.num_requests is None or cfg.num_requests >= 1, "num_requests", "None or >= 1"),
        (cfg.rate_scale > 0, "rate_scale", "> 0"),
        (cfg.arrival == "trace" or cfg.rate_scale == 1.0, "rate_scale",
         "1.0 unless arrival=trace (synthetic arrivals are set by rate_qps)"),
        (cfg.arrival == "trace" or cfg.rate_qps > 0, "rate_qps", "> 0"),
        (cfg.interarrival_cv > 0, "interarrival_cv", "> 0"),
        (cfg.lengths == "trace" or cfg.min_tokens >= 2, "min_tokens",
         ">= 2 (a request has at least one prompt and one output token)"),
        (cfg.lengths == "trace" or cfg.max_tokens >= cfg.min_tokens, "max_tokens", ">= min_tokens"),
        (cfg.lengths == "trace" or cfg.max_tokens <= MAX_TOKENS_PER_REQUEST, "max_tokens",
         f"<= {MAX_TOKENS_PER_REQUEST:,} (far beyond any model's context)"),
        (cfg.prefill_decode_ratio > 0, "prefill_decode_ratio", "> 0"),
        (cfg.zipf_theta >= 0, "zipf_theta", ">= 0"),
        (cfg.max_prompt_tokens is None or cfg.max_prompt_tokens >= 1, "max_prompt_tokens", "None or >= 1"),
        (cfg.max_output_tokens is None or cfg.max_output_tokens >= 1, "max_output_tokens", "None or >= 1"),
    ]
    for ok, field, expected in checks:
        if not ok:
            raise ConfigError(f"workload.{field}={getattr(cfg, field)!r}: expected {expected}")


def _num_requests(cfg: WorkloadConfig, trace: Trace | None) -> int:
    if trace is None:
        if cfg.num_requests is None:
            raise ConfigError(
                "workload.num_requests must be set when neither arrivals nor lengths come from a trace"
            )
        return cfg.num_requests
    rows = len(trace.prompt_tokens)
    if cfg.num_requests is None:
        return rows
    if cfg.arrival == "trace" and cfg.num_requests > rows:
        raise ConfigError(
            f"workload.num_requests={cfg.num_requests} but {trace.path} has only {rows} requests to replay"
        )
    return cfg.num_requests


def _default_name(cfg: WorkloadConfig) -> str:
    source = Path(cfg.trace).stem if cfg.trace and "trace" in (cfg.arrival, cfg.lengths) else cfg.lengths
    if cfg.arrival == "trace":
        return source if cfg.rate_scale == 1.0 else f"{source}-x{cfg.rate_scale:g}"
    return f"{source}-{cfg.arrival}-{cfg.rate_qps:g}qps"
