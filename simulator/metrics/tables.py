"""The per-request, per-iteration and per-token tables users read (pandas), and the plain per-request
columns the summary and SLO checks read."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simulator.metrics.gaps import _per_request_tbt
from simulator.metrics.records import IterationRecords, RequestColumns, RequestRecords, check_records
from simulator.perfetto import iteration_kinds

if TYPE_CHECKING:
    import pandas as pd


def request_table(records: RequestRecords) -> pd.DataFrame:
    """One row per request with its milestones and latencies (s). Columns:

    request_id, replica_id, arrived_s, prompt_tokens, output_tokens, first_scheduled_s,
    first_token_s, completed_s, ttft_s, tpot_s, e2e_s, normalized_e2e_s_per_token,
    queueing_delay_s, tbt_max_s, tbt_p99_s, preemptions, cached_tokens (prompt tokens a prefix cache
    held at first admission), prompt_tokens_computed (prompt_tokens - cached_tokens: what prefill
    computed, recomputation after preemption aside), rejected, reject_reason, then the records'
    extra_columns if any (disaggregated runs: docs/disaggregation.md).
    Latencies are NaN where undefined (rejected, unfinished, or a single output token for TPOT/TBT).
    """
    import pandas as pd

    return pd.DataFrame(_request_columns(records, per_request_tbt=True))


def request_latencies(records: RequestRecords) -> RequestColumns:
    """request_table's columns as numpy arrays, without the per-request TBT ones (tbt_max_s and tbt_p99_s
    are NaN): what the summary and SLO checks read, without sorting every token gap or building a
    DataFrame."""
    return _request_columns(records, per_request_tbt=False)


def _request_columns(records: RequestRecords, per_request_tbt: bool) -> RequestColumns:
    """request_table's columns; without per_request_tbt the (sort-heavy) tbt_max_s/tbt_p99_s are NaN."""
    check_records(records)
    arrived = np.asarray(records.arrived_s, dtype=np.float64)
    completed = np.asarray(records.completed_s, dtype=np.float64)
    first_token = np.asarray(records.first_token_s, dtype=np.float64)
    output_tokens = np.asarray(records.output_tokens, dtype=np.int64)
    rejected = np.asarray(records.rejected, dtype=bool)
    prompt_tokens = np.asarray(records.prompt_tokens, dtype=np.int64)
    cached_tokens = (np.zeros(len(prompt_tokens), np.int64) if records.cached_tokens is None
                     else np.asarray(records.cached_tokens, dtype=np.int64))
    e2e = completed - arrived
    if per_request_tbt:
        tbt_max, tbt_p99 = _per_request_tbt(records)
    else:
        tbt_max, tbt_p99 = np.full(len(arrived), np.nan), np.full(len(arrived), np.nan)
    table = {
        "request_id": np.asarray(records.request_id, dtype=np.int64),
        "replica_id": np.asarray(records.replica_id, dtype=np.int64),
        "arrived_s": arrived,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "first_scheduled_s": np.asarray(records.first_scheduled_s, dtype=np.float64),
        "first_token_s": first_token,
        "completed_s": completed,
        "ttft_s": first_token - arrived,
        "tpot_s": _tpot_s(records, completed),
        "e2e_s": e2e,
        "normalized_e2e_s_per_token": e2e / np.maximum(output_tokens, 1),
        "queueing_delay_s": np.asarray(records.first_scheduled_s, dtype=np.float64) - arrived,
        "tbt_max_s": tbt_max,
        "tbt_p99_s": tbt_p99,
        "preemptions": np.asarray(records.preemptions, dtype=np.int64),
        "cached_tokens": cached_tokens,
        "prompt_tokens_computed": prompt_tokens - cached_tokens,
        "rejected": rejected,
        "reject_reason": np.asarray(records.reject_reason, dtype=object),
        **{name: np.asarray(column) for name, column in records.extra_columns.items()},
    }
    # A rejected request has no latency, whatever partial times it may carry. (Every latency column is
    # an array computed above, so no record is written to.)
    if rejected.any():
        for name in ("ttft_s", "tpot_s", "e2e_s", "normalized_e2e_s_per_token", "queueing_delay_s",
                     "tbt_max_s", "tbt_p99_s"):
            table[name][rejected] = np.nan
    return table


def _tpot_s(records: RequestRecords, completed: np.ndarray) -> np.ndarray:
    """(last token - first token) / (tokens - 1) for completed requests with >= 2 tokens, else NaN."""
    times = np.asarray(records.token_times_s, dtype=np.float64)
    offsets = np.asarray(records.token_offsets, dtype=np.int64)
    counts = np.diff(offsets)
    tpot = np.full(len(counts), np.nan)
    ok = (counts >= 2) & ~np.isnan(completed)
    tpot[ok] = (times[offsets[1:][ok] - 1] - times[offsets[:-1][ok]]) / (counts[ok] - 1)
    return tpot


def iteration_table(iters: IterationRecords, lo: int = 0, hi: int | None = None) -> pd.DataFrame:
    """One row per stage iteration: replica_id, stage, start_s, duration_s, end_s, kind
    (prefill/decode/mixed/empty), batch_size, num_prefill_tokens, num_decode_tokens, kv_blocks_used,
    kv_blocks_cached (free blocks keeping prefix-cached KV; 0 without a prefix cache).
    `lo`, `hi`: only rows lo..hi-1 (default all)."""
    import pandas as pd

    rows = slice(lo, hi)

    def column(values, dtype) -> np.ndarray:
        return np.asarray(np.asarray(values)[rows], dtype=dtype)

    start = column(iters.start_s, np.float64)
    duration = column(iters.duration_s, np.float64)
    num_prefill_tokens = column(iters.num_prefill_tokens, np.int64)
    num_decode_tokens = column(iters.num_decode_tokens, np.int64)
    return pd.DataFrame({
        "replica_id": column(iters.replica_id, np.int64),
        "stage": column(iters.stage, np.int64),
        "start_s": start,
        "duration_s": duration,
        "end_s": start + duration,
        "kind": iteration_kinds(num_prefill_tokens, num_decode_tokens),
        "batch_size": column(iters.batch_size, np.int64),
        "num_prefill_tokens": num_prefill_tokens,
        "num_decode_tokens": num_decode_tokens,
        "kv_blocks_used": column(iters.kv_blocks_used, np.int64),
        "kv_blocks_cached": (np.zeros(len(start), np.int64) if iters.kv_blocks_cached is None
                             else column(iters.kv_blocks_cached, np.int64)),
    })


def token_times_table(records: RequestRecords, lo: int = 0, hi: int | None = None) -> pd.DataFrame:
    """Every output token: request_id, token_index (0 = first token), time_s. TBT gaps are the
    differences of time_s within a request_id. `lo`, `hi`: only requests lo..hi-1 (default all)."""
    import pandas as pd

    offsets = np.asarray(records.token_offsets, dtype=np.int64)
    hi = len(offsets) - 1 if hi is None else hi
    counts = np.diff(offsets[lo: hi + 1])
    first, last = offsets[lo], offsets[hi]
    return pd.DataFrame({
        "request_id": np.repeat(np.asarray(records.request_id, dtype=np.int64)[lo:hi], counts),
        "token_index": (np.arange(first, last) - np.repeat(offsets[lo:hi], counts)).astype(np.int32),
        "time_s": np.asarray(records.token_times_s, dtype=np.float64)[first:last],
    })
