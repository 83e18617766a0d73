"""Trace readers: files of recorded requests, one request a row.

  vidur, azure   CSV (simulator/traces/csv_formats.py): arrival times (optional for vidur) and lengths
  mooncake       JSON lines (simulator/traces/mooncake.py): arrival times, lengths, and which prompts share
                 prefixes (hash ids of 512-token blocks)

`read_trace(trace, trace_format)` picks the reader; with trace_format=auto a .jsonl file, or one whose
first line is a JSON object with Mooncake's fields, is mooncake, anything else a CSV told from its header.
"""
from __future__ import annotations

from simulator.config import ConfigError
from simulator.traces.common import MAX_TOKENS_PER_REQUEST, Trace, TraceError, resolve_trace_path
from simulator.traces.csv_formats import AZURE_COLUMNS, MISSING_TEXTS, VIDUR_COLUMNS, read_csv_trace
from simulator.traces.mooncake import MOONCAKE_BLOCK_TOKENS, looks_like_mooncake, read_mooncake_trace

TRACE_FORMATS = ("auto", "vidur", "azure", "mooncake")

__all__ = [
    "AZURE_COLUMNS", "MAX_TOKENS_PER_REQUEST", "MISSING_TEXTS", "MOONCAKE_BLOCK_TOKENS", "TRACE_FORMATS",
    "VIDUR_COLUMNS", "Trace", "TraceError", "read_trace", "resolve_trace_path",
]


def read_trace(trace: str | None, trace_format: str = "auto") -> Trace:
    """Read the trace file `trace` (absolute, or relative to the repository root, then the working
    directory) in `trace_format`, checking every row; TraceError names the file, line and column or field
    of the first bad value."""
    if not trace:
        raise ConfigError("workload.trace is empty, but workload.arrival or workload.lengths is 'trace'")
    if trace_format not in TRACE_FORMATS:
        raise ConfigError(f"workload.trace_format={trace_format!r}: expected one of {TRACE_FORMATS}")
    path = resolve_trace_path(trace)
    if trace_format == "mooncake" or (trace_format == "auto" and looks_like_mooncake(path)):
        return read_mooncake_trace(path)
    return read_csv_trace(path, trace_format)
