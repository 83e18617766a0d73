"""Latency and throughput metrics from a finished simulation: per-request tables, summary, output files.

The simulator records what happened in two flat, array-based records (`RequestRecords`,
`IterationRecords`); this package only reads them. Everything is vectorised with numpy (no Python
loop over requests or tokens), so millions of output tokens summarise in a fraction of a second.

Definitions (all times in seconds of simulated time):
  TTFT      first_token - arrived
  TBT       each gap between consecutive output tokens of one request (preemption stalls included)
  TPOT      per request, mean gap after the first token: (last_token - first_token) / (tokens - 1)
  E2E       completed - arrived;  normalized E2E = E2E / output_tokens (vLLM paper's metric)
  queueing  first_scheduled - arrived
Rejected requests are counted but excluded from every latency statistic. A statistic covers the
requests where it is defined: TTFT/queueing those that got that far, E2E/TPOT completed ones.

The package, by idea: records.py (what a simulation records), gaps.py (time between tokens, streamed for
very large runs), tables.py (the tables users read), summary.py (headline numbers, terminal table, notes),
files.py (result files). Everything public is importable from `simulator.metrics` itself.
"""
from __future__ import annotations

from simulator.metrics.files import (
    PARQUET_COMPRESSION,
    RESULT_FILES,
    WRITE_ROWS_PER_CHUNK,
    prepare_output_dir,
    write_outputs,
)
from simulator.metrics.gaps import (
    GAPS_IN_ONE_ARRAY_MAX_TOKENS,
    TOKENS_PER_CHUNK,
    StreamedGaps,
    all_tbt_gaps,
    tbt_gaps_s,
)
from simulator.metrics.records import (
    PERCENTILES,
    SIGNIFICANT_DIGITS,
    IterationRecords,
    RequestColumns,
    RequestRecords,
    _round,
    check_records,
)
from simulator.metrics.summary import (
    add_prefix_cache_counts,
    format_summary,
    latency_stats,
    load_notes,
    prefix_cache_counts,
    summarize,
    summary_json,
)
from simulator.metrics.tables import iteration_table, request_latencies, request_table, token_times_table
from simulator.perfetto import write_chrome_trace

__all__ = [
    "GAPS_IN_ONE_ARRAY_MAX_TOKENS",
    "PARQUET_COMPRESSION",
    "PERCENTILES",
    "RESULT_FILES",
    "SIGNIFICANT_DIGITS",
    "TOKENS_PER_CHUNK",
    "WRITE_ROWS_PER_CHUNK",
    "IterationRecords",
    "RequestColumns",
    "RequestRecords",
    "StreamedGaps",
    "_round",
    "add_prefix_cache_counts",
    "all_tbt_gaps",
    "check_records",
    "format_summary",
    "iteration_table",
    "latency_stats",
    "load_notes",
    "prefix_cache_counts",
    "prepare_output_dir",
    "request_latencies",
    "request_table",
    "summarize",
    "summary_json",
    "tbt_gaps_s",
    "token_times_table",
    "write_chrome_trace",
    "write_outputs",
]
