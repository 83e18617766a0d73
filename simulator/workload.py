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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.config import ConfigError, _load_yaml, from_dict
from simulator.paths import REPO_ROOT

ARRIVALS = ("trace", "poisson", "gamma", "fixed")
LENGTHS = ("trace", "uniform", "zipf")
TRACE_FORMATS = ("auto", "vidur", "azure")

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
    try:
        # skip_blank_lines=False keeps row i on line i + 2, so errors point at the right line.
        frame = pd.read_csv(path, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not a readable CSV trace ({e})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = _drop_trailing_blank_rows(frame)
    if len(frame) == 0:
        raise TraceError(f"{path}: the trace has a header but no requests")

    fmt = _detect_format(path, frame.columns, trace_format)
    arrival_col, prompt_col, output_col = VIDUR_COLUMNS if fmt == "vidur" else AZURE_COLUMNS
    needed = (prompt_col, output_col) if fmt == "vidur" else (arrival_col, prompt_col, output_col)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise TraceError(
            f"{path}: missing column(s) {missing} for the {fmt} trace format; expected "
            f"{_format_description(fmt)}; found {list(frame.columns)}"
        )
    prompt = _token_counts(frame[prompt_col], path, prompt_col, "prompt")
    output = _token_counts(frame[output_col], path, output_col, "output")
    if arrival_col not in frame.columns:
        arrived = None
    elif fmt == "vidur":
        arrived = _seconds_column(frame[arrival_col], path, arrival_col)
    else:
        arrived = _timestamp_column(frame[arrival_col], path, arrival_col)
    if arrived is not None:
        _check_sorted(arrived, frame[arrival_col], path, arrival_col)
    return Trace(path=path, arrived_s=arrived, prompt_tokens=prompt, output_tokens=output)


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


def _drop_trailing_blank_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Blank lines at the end of a file are harmless; blank lines inside it are reported as rows."""
    filled = frame.notna().any(axis=1).to_numpy()
    last = np.flatnonzero(filled)
    return frame.iloc[: last[-1] + 1] if len(last) else frame.iloc[:0]


def _line(row: int) -> int:
    return row + 2  # 1-based, and the header is line 1


def _token_counts(column: pd.Series, path: Path, name: str, what: str) -> np.ndarray:
    """The column as int64, or TraceError at the first value that is not a whole number >= 1."""
    if column.dtype.kind in "iu":
        values = column.to_numpy(np.int64)
    else:
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(numbers) | (numbers != np.floor(numbers))
        if bad.any():
            row = int(np.argmax(bad))
            raw = column.iloc[row]
            problem = "missing value" if pd.isna(raw) or str(raw).strip() == "" else f"'{raw}' is not a whole number"
            raise TraceError(f"{path}, line {_line(row)}, column {name}: {problem} ({what} tokens expected)")
        values = numbers.astype(np.int64)
    too_small = values < 1
    if too_small.any():
        row = int(np.argmax(too_small))
        why = "a request must generate at least one output token" if what == "output" else "a prompt needs at least one token"
        raise TraceError(f"{path}, line {_line(row)}, column {name}: {values[row]} tokens ({why})")
    return values


def _seconds_column(column: pd.Series, path: Path, name: str) -> np.ndarray:
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(numbers)
    if bad.any():
        row = int(np.argmax(bad))
        raw = column.iloc[row]
        problem = "missing value" if pd.isna(raw) or str(raw).strip() == "" else f"'{raw}' is not a number"
        raise TraceError(f"{path}, line {_line(row)}, column {name}: {problem} (arrival time in seconds expected)")
    return numbers


def _timestamp_column(column: pd.Series, path: Path, name: str) -> np.ndarray:
    """Datetime strings -> seconds since the first row. Time zones are honoured; naive times are UTC."""
    stamps = pd.to_datetime(column, format="ISO8601", utc=True, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raw = column.iloc[row]
        problem = "missing value" if pd.isna(raw) or str(raw).strip() == "" else f"cannot parse '{raw}' as a datetime"
        raise TraceError(
            f"{path}, line {_line(row)}, column {name}: {problem} (expected e.g. 2023-11-16 18:15:46.6805900)"
        )
    return (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(np.float64)


def _check_sorted(arrived: np.ndarray, column: pd.Series, path: Path, name: str) -> None:
    earlier = np.diff(arrived) < 0
    if earlier.any():
        row = int(np.argmax(earlier)) + 1
        raise TraceError(
            f"{path}, line {_line(row)}, column {name}: '{column.iloc[row]}' is earlier than the previous "
            f"row's '{column.iloc[row - 1]}'; a trace must be sorted by arrival time"
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
