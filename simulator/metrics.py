"""Latency and throughput metrics from a finished simulation: per-request tables, summary, output files.

The simulator records what happened in two flat, array-based records (`RequestRecords`,
`IterationRecords`); this module only reads them. Everything is vectorised with numpy (no Python
loop over requests or tokens), so millions of output tokens summarise in a fraction of a second.

Definitions (all times in seconds of simulated time):
  TTFT      first_token - arrived
  TBT       each gap between consecutive output tokens of one request (preemption stalls included)
  TPOT      per request, mean gap after the first token: (last_token - first_token) / (tokens - 1)
  E2E       completed - arrived;  normalized E2E = E2E / output_tokens (vLLM paper's metric)
  queueing  first_scheduled - arrived
Rejected requests are counted but excluded from every latency statistic. A statistic covers the
requests where it is defined: TTFT/queueing those that got that far, E2E/TPOT completed ones.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulator.atomic import write_atomically, write_text_atomically
from simulator.config import ConfigError
from simulator.perfetto import iteration_kinds, write_chrome_trace

if TYPE_CHECKING:
    import pandas as pd

    # What the summary and the SLO checks read: request_latencies' columns or a request_table DataFrame,
    # both through table[column].
    RequestTable = Mapping[str, np.ndarray] | pd.DataFrame

PERCENTILES = (50, 90, 99)
SIGNIFICANT_DIGITS = 7  # summary floats are rounded to this many, so JSON is short and stable

# A per-request table as plain columns: name -> numpy array with one entry per request. The summary and
# the SLO checks read it as it is; only the tables handed to users become pandas DataFrames, which keeps
# pandas (a third of a second to import) out of a simulation that writes no files.
RequestColumns = dict[str, np.ndarray]


@dataclass
class RequestRecords:
    """What happened to each request; all arrays have length n and are indexed by request_id order.

    Times are simulated seconds. A request that never reached a milestone has NaN there.
    `token_times_s` holds every output token's emission time, request after request in request_id
    order; request i's tokens are `token_times_s[token_offsets[i]:token_offsets[i + 1]]`
    (CSR layout, `token_offsets` has n + 1 entries, starting at 0).
    """

    request_id: np.ndarray  # int64
    replica_id: np.ndarray  # int64, -1 if never routed
    arrived_s: np.ndarray  # float64
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64, requested output length
    first_scheduled_s: np.ndarray  # float64, first time any of its work was in a batch
    first_token_s: np.ndarray  # float64
    completed_s: np.ndarray  # float64, NaN if never
    preemptions: np.ndarray  # int64
    rejected: np.ndarray  # bool
    reject_reason: np.ndarray  # object (str), "" when not rejected
    token_times_s: np.ndarray  # float64, all output tokens' emission times
    token_offsets: np.ndarray  # int64, n + 1
    # Optional per-request columns (n entries each) appended to request_table as they are, e.g. the KV
    # transfer time of disaggregated serving (simulator/disagg). Empty for colocated runs.
    extra_columns: dict = field(default_factory=dict)
    # int64: prompt tokens a prefix cache held at the request's first admission (they skip prefill);
    # None: no prefix cache ran (all zeros).
    cached_tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.request_id)


@dataclass
class IterationRecords:
    """One row per batch a pipeline stage executed (with pp > 1 a batch appears once per stage).

    The integer columns may be int32 or int64 (the simulator's recorder keeps int32: tens of millions of
    rows for a million requests); iteration_table gives int64 either way."""

    replica_id: np.ndarray  # int64
    stage: np.ndarray  # int64, pipeline stage index, 0 first
    start_s: np.ndarray  # float64
    duration_s: np.ndarray  # float64
    batch_size: np.ndarray  # int64, requests in the batch
    num_prefill_tokens: np.ndarray  # int64, prompt tokens processed in this iteration
    num_decode_tokens: np.ndarray  # int64, decode tokens (one per decoding request)
    kv_blocks_used: np.ndarray  # int64, KV blocks allocated on the replica when the iteration started
    # int64, blocks no request holds that keep cached KV (prefix caches) then; None: no prefix cache (0).
    # A run of decodes repeats its first step's value.
    kv_blocks_cached: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.start_s)


# ----------------------------------------------------------------------------- per-request metrics


def check_records(records: RequestRecords) -> None:
    """Raise ValueError naming the field if the arrays do not line up."""
    n = len(records.request_id)
    for f in fields(RequestRecords):
        if f.name in ("token_times_s", "token_offsets", "request_id", "extra_columns"):
            continue
        if f.name == "cached_tokens" and records.cached_tokens is None:
            continue
        if len(getattr(records, f.name)) != n:
            raise ValueError(f"RequestRecords.{f.name} has {len(getattr(records, f.name))} entries, expected {n}")
    for name, column in records.extra_columns.items():
        if len(column) != n:
            raise ValueError(f"RequestRecords.extra_columns['{name}'] has {len(column)} entries, expected {n}")
    offsets = np.asarray(records.token_offsets)
    if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(records.token_times_s):
        raise ValueError(
            f"RequestRecords.token_offsets must have {n + 1} entries from 0 to "
            f"len(token_times_s)={len(records.token_times_s)}"
        )
    if (np.diff(offsets) < 0).any():
        raise ValueError("RequestRecords.token_offsets must be non-decreasing")


def _tokens_per_request(records: RequestRecords) -> np.ndarray:
    return np.diff(np.asarray(records.token_offsets, dtype=np.int64))


TOKENS_PER_CHUNK = 1 << 20  # token-sized temporaries are built this many tokens at a time (8 MiB each)
# A run with more tokens than this reads its TBT gaps in chunks (StreamedGaps) rather than copying them all
# (32 MiB here; hundreds of MiB beside the token times of a million requests).
GAPS_IN_ONE_ARRAY_MAX_TOKENS = 1 << 22


def _request_chunks(offsets: np.ndarray, tokens_per_chunk: int = TOKENS_PER_CHUNK):
    """Consecutive request ranges (lo, hi) holding about `tokens_per_chunk` tokens each (at least one
    request), so that work over every token needs memory for one chunk rather than for all tokens."""
    n = len(offsets) - 1
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(offsets, offsets[lo] + tokens_per_chunk, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def _chunk_gaps_s(times: np.ndarray, offsets: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Every within-request inter-token gap of requests lo..hi-1, request after request.

    np.diff over their tokens gives one gap per adjacent pair; the pair straddling two requests (the
    gap just before each request's first token) is masked out.
    """
    first, last = offsets[lo], offsets[hi]
    if last - first < 2:
        return np.empty(0)
    same_request = np.ones(last - first - 1, dtype=bool)
    starts = offsets[lo + 1: hi] - first
    starts = starts[(starts > 0) & (starts < last - first)]
    same_request[starts - 1] = False
    return np.diff(times[first:last])[same_request]


def _gaps_per_request(records: RequestRecords) -> np.ndarray:
    return np.maximum(_tokens_per_request(records) - 1, 0)


def tbt_gaps_s(records: RequestRecords, request_ids: np.ndarray | None = None) -> np.ndarray:
    """All time-between-tokens gaps (s) of non-rejected requests, request after request.

    `request_ids` (optional) keeps only those requests' gaps, e.g. the measured window of a
    capacity-search trial after warm-up and cool-down are trimmed. Built a chunk of requests at a
    time, so the only token-sized array is the result.
    """
    check_records(records)
    keep = ~np.asarray(records.rejected, dtype=bool)
    if request_ids is not None:
        keep &= np.isin(np.asarray(records.request_id), np.asarray(request_ids))
    times = np.asarray(records.token_times_s, dtype=np.float64)
    offsets = np.asarray(records.token_offsets, dtype=np.int64)
    counts = _gaps_per_request(records)
    gaps = np.empty(int(counts[keep].sum()))
    filled = 0
    for lo, hi in _request_chunks(offsets):
        chunk = _chunk_gaps_s(times, offsets, lo, hi)
        if not keep[lo:hi].all():
            chunk = chunk[np.repeat(keep[lo:hi], counts[lo:hi])]
        gaps[filled: filled + len(chunk)] = chunk
        filled += len(chunk)
    return gaps


def all_tbt_gaps(records: RequestRecords, max_tokens_in_one_array: int = GAPS_IN_ONE_ARRAY_MAX_TOKENS,
                 tokens_per_chunk: int = TOKENS_PER_CHUNK) -> np.ndarray | StreamedGaps:
    """What the summary and the SLO verdicts read of the TBT gaps: tbt_gaps_s(records) when the run has
    at most `max_tokens_in_one_array` tokens, else a StreamedGaps over them (the same statistics, without
    a second token-sized array beside the token times)."""
    if len(records.token_times_s) <= max_tokens_in_one_array:
        return tbt_gaps_s(records)
    return StreamedGaps(records, tokens_per_chunk)


# Percentiles of more values than one chunk pick each wanted order statistic out of the bit patterns of
# the values: non-negative floats sort as their bit patterns do as integers. A pass over the values
# counts them per range of patterns (this many bits at a time) and keeps the range holding the order
# statistic, until that range has few enough values (a chunk's worth) to sort.
_PATTERN_BITS_PER_PASS = 19


@dataclass
class StreamedGaps:
    """Every TBT gap (s) of non-rejected requests (what tbt_gaps_s returns), computed from the token times
    a chunk of requests at a time whenever read, so that no gap-sized array is held.

    Statistics match those of the whole array: percentiles exactly (np.percentile's linear method), the
    mean up to the rounding of a sum taken in chunks. `unbounded` adds that many infinitely long gaps (an
    unfinished request's missing tokens, as the SLO checks count them).
    """

    records: RequestRecords
    tokens_per_chunk: int = TOKENS_PER_CHUNK
    unbounded: int = 0

    def __post_init__(self) -> None:
        check_records(self.records)
        self._keep = ~np.asarray(self.records.rejected, dtype=bool)
        self._counts = _gaps_per_request(self.records)
        self.count = int(self._counts[self._keep].sum())  # finite gaps

    def __len__(self) -> int:
        return self.count + self.unbounded

    def with_unbounded(self, unbounded: int) -> StreamedGaps:
        """The same gaps and `unbounded` infinite ones."""
        return StreamedGaps(self.records, self.tokens_per_chunk, unbounded)

    def chunks(self):
        """The gaps, a chunk of requests at a time, in tbt_gaps_s' order."""
        times = np.asarray(self.records.token_times_s, dtype=np.float64)
        offsets = np.asarray(self.records.token_offsets, dtype=np.int64)
        for lo, hi in _request_chunks(offsets, self.tokens_per_chunk):
            chunk = _chunk_gaps_s(times, offsets, lo, hi)
            if not self._keep[lo:hi].all():
                chunk = chunk[np.repeat(self._keep[lo:hi], self._counts[lo:hi])]
            if len(chunk):
                yield chunk

    def stats(self) -> dict:
        """latency_stats of the gaps: {mean, p50, p90, p99, max} (None when there are none)."""
        keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
        if self.count == 0:
            return dict.fromkeys(keys)
        total_s = largest_s = 0.0
        for chunk in self.chunks():
            total_s, largest_s = total_s + float(chunk.sum()), max(largest_s, float(chunk.max()))
        numbers = [total_s / self.count, *self.percentiles(PERCENTILES), largest_s]
        return {k: _round(v) for k, v in zip(keys, numbers)}

    def percentiles(self, qs) -> list[float]:
        """np.percentile (linear) of the gaps at each of `qs` (0-100); inf where a percentile falls among
        the unbounded gaps, NaN when there are no gaps at all (slo.percentiles' rules)."""
        n = len(self)
        if n == 0:
            return [float("nan")] * len(qs)
        finite_cap = 1e300  # stands in for inf, as in slo.percentiles
        # np.percentile's linear method: virtual index (n - 1) q, interpolated between its neighbours.
        virtual = (n - 1) * np.true_divide(np.asarray(qs, dtype=np.float64), 100)
        below = np.floor(virtual).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        below = np.minimum(below, n - 1)
        gamma = virtual - below
        ranks = sorted(set(below.tolist()) | set(above.tolist()))
        finite = [r for r in ranks if r < self.count]
        value = dict(zip(finite, self._order_statistics(finite)))
        value.update({r: finite_cap for r in ranks if r >= self.count})
        low, high = np.array([value[r] for r in below]), np.array([value[r] for r in above])
        # numpy's _lerp: from the nearer end, so that gamma 0 or 1 gives that neighbour exactly.
        difference = high - low
        results = low + difference * gamma
        np.subtract(high, difference * (1 - gamma), out=results, where=gamma >= 0.5)
        return [float("inf") if r >= finite_cap / 2 else float(r) for r in results]

    def _order_statistics(self, ranks) -> list[float]:
        """The values at each 0-based position of `ranks` in the sorted finite gaps (all >= 0)."""
        # Each wanted rank: (shift, prefix, rank among the values whose bit pattern >> shift == prefix, count).
        wanted = {rank: (63, 0, rank, self.count) for rank in ranks}
        while True:
            narrow = {(shift, prefix) for shift, prefix, _, count in wanted.values()
                      if shift > 0 and count > self.tokens_per_chunk}
            if not narrow:
                break
            histograms = {key: np.zeros(1 << (key[0] - max(key[0] - _PATTERN_BITS_PER_PASS, 0)), np.int64)
                          for key in narrow}
            for chunk in self.chunks():
                bits = chunk.view(np.int64)
                for (shift, prefix), histogram in histograms.items():
                    inside = bits[(bits >> shift) == prefix] if shift < 63 else bits
                    new_shift = max(shift - _PATTERN_BITS_PER_PASS, 0)
                    histogram += np.bincount((inside >> new_shift) & (len(histogram) - 1),
                                             minlength=len(histogram))
            for rank, (shift, prefix, within, count) in wanted.items():
                if (shift, prefix) in histograms:
                    histogram = histograms[(shift, prefix)]
                    new_shift = max(shift - _PATTERN_BITS_PER_PASS, 0)
                    cumulative = np.cumsum(histogram)
                    part = int(np.searchsorted(cumulative, within, side="right"))
                    before = int(cumulative[part - 1]) if part else 0
                    wanted[rank] = (new_shift, (prefix << (shift - new_shift)) | part, within - before,
                                    int(histogram[part]))
        # Few enough values left in each range: collect and sort them (a single pattern is its value).
        collect = {(shift, prefix) for shift, prefix, _, _ in wanted.values() if shift > 0}
        found: dict = {key: [] for key in collect}
        if collect:
            for chunk in self.chunks():
                bits = chunk.view(np.int64)
                for (shift, prefix), parts in found.items():
                    parts.append(chunk[(bits >> shift) == prefix] if shift < 63 else chunk)
        ordered = {key: np.sort(np.concatenate(parts)) for key, parts in found.items()}
        values = []
        for rank in ranks:
            shift, prefix, within, _ = wanted[rank]
            if shift == 0:
                values.append(float(np.int64(prefix).view(np.float64)))
            else:
                values.append(float(ordered[(shift, prefix)][within]))
        return values


def _per_request_tbt(records: RequestRecords, q: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """(max, q-th percentile) of each request's gaps (s); NaN for requests with fewer than 2 tokens.

    A chunk of requests at a time, one sort of the chunk's gaps keyed by (request, gap) instead of a
    loop over requests; the percentile interpolates linearly like np.percentile.
    """
    n = len(records.request_id)
    times = np.asarray(records.token_times_s, dtype=np.float64)
    offsets = np.asarray(records.token_offsets, dtype=np.int64)
    all_counts = _gaps_per_request(records)
    tbt_max, tbt_q = np.full(n, np.nan), np.full(n, np.nan)
    for lo, hi in _request_chunks(offsets):
        gaps, counts = _chunk_gaps_s(times, offsets, lo, hi), all_counts[lo:hi]
        if len(gaps) == 0:
            continue
        # Owners are already grouped, so sorting owner * span + gap orders gaps within each request.
        # The key only chooses the order; values are read back from `gaps` exactly.
        owner = np.repeat(np.arange(hi - lo), counts)
        span = 2.0 * float(gaps.max()) + 1.0
        ordered = gaps[np.argsort(owner * span + gaps)]
        has = counts > 0
        first = (np.cumsum(counts) - counts)[has]
        m = counts[has]
        position = q / 100.0 * (m - 1)
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, m - 1)
        fraction = position - lower
        low_value, high_value = ordered[first + lower], ordered[first + upper]
        tbt_q[lo:hi][has] = low_value + (high_value - low_value) * fraction
        tbt_max[lo:hi][has] = ordered[first + m - 1]
    return tbt_max, tbt_q


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


# ----------------------------------------------------------------------------- summary


def _round(x) -> float | None:
    """A JSON-safe float with SIGNIFICANT_DIGITS digits; None for NaN/inf (JSON null)."""
    x = float(x)
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}") if np.isfinite(x) else None


def latency_stats(values: np.ndarray, overwrite: bool = False) -> dict:
    """{mean, p50, p90, p99, max} of the finite values (linear-interpolated percentiles); None if none.

    overwrite=True lets it reorder `values` in place instead of copying them (for large arrays the
    caller no longer needs, such as every TBT gap).
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values, overwrite = values[finite], True  # a copy already: ours to reorder
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if len(values) == 0:
        return dict.fromkeys(keys)
    # The mean is taken first: np.percentile(overwrite_input=True) partitions values in place.
    numbers = [values.mean(), *np.percentile(values, PERCENTILES, overwrite_input=overwrite), values.max()]
    return {k: _round(v) for k, v in zip(keys, numbers)}


def summarize(records: RequestRecords, iters: IterationRecords | None, simulated_s: float, wall_s: float,
              latencies: RequestTable | None = None,
              tbt_gaps: np.ndarray | StreamedGaps | None = None) -> dict:
    """The run's headline numbers as a JSON-ready dict (floats rounded, NaN -> None).

    Latency blocks (ttft_s, tbt_s, tpot_s, e2e_s, normalized_e2e_s_per_token, queueing_delay_s)
    each hold {mean, p50, p90, p99, max} in seconds. Throughput is measured over the makespan, from
    the first arrival to the last completion: throughput_rps = completed / makespan_s and
    output_tokens_per_s = output tokens of completed requests / makespan_s. offered_rps is the
    arrival rate, (requests - 1) / (last arrival - first arrival). Iteration numbers count stage-0
    rows (each batch once, whatever the pipeline depth).

    A caller that already built `request_latencies(records)` or `all_tbt_gaps(records)` passes them
    (`latencies`, `tbt_gaps`; a request_table DataFrame or tbt_gaps_s' array will do too) to save building
    them again; an array of gaps is then reordered in place (its values stay).
    """
    table = request_latencies(records) if latencies is None else latencies
    gaps = all_tbt_gaps(records) if tbt_gaps is None else tbt_gaps
    rejected = np.asarray(table["rejected"], dtype=bool)
    completed_s = np.asarray(table["completed_s"], dtype=np.float64)
    completed = ~rejected & ~np.isnan(completed_s)
    arrived = np.asarray(table["arrived_s"], dtype=np.float64)
    n = len(arrived)

    reasons, reason_counts = np.unique(np.asarray(table["reject_reason"])[rejected].astype(str), return_counts=True)
    last_completion = completed_s[completed].max() if completed.any() else np.nan
    makespan_s = last_completion - arrived.min() if completed.any() else np.nan
    output_tokens_done = int(np.asarray(table["output_tokens"])[completed].sum())
    arrival_span_s = arrived.max() - arrived.min() if n else 0.0
    preemptions = np.asarray(table["preemptions"])
    # Tables written before prefix caching existed have no cached_tokens column: nothing was cached.
    cached = np.asarray(table["cached_tokens"])[~rejected] if "cached_tokens" in table else np.zeros(0)
    prompt_total = int(np.asarray(table["prompt_tokens"])[~rejected].sum())

    summary = {
        "num_requests": n,
        "completed": int(completed.sum()),
        "unfinished": int((~rejected & ~completed).sum()),
        "rejected": int(rejected.sum()),
        "rejected_by_reason": {str(r): int(c) for r, c in zip(reasons, reason_counts)},
        "ttft_s": latency_stats(table["ttft_s"]),
        "tbt_s": gaps.stats() if isinstance(gaps, StreamedGaps) else latency_stats(gaps, overwrite=True),
        "tpot_s": latency_stats(table["tpot_s"]),
        "e2e_s": latency_stats(table["e2e_s"]),
        "normalized_e2e_s_per_token": latency_stats(table["normalized_e2e_s_per_token"]),
        "queueing_delay_s": latency_stats(table["queueing_delay_s"]),
        "makespan_s": _round(makespan_s),
        "throughput_rps": _round(completed.sum() / makespan_s) if makespan_s > 0 else None,
        "output_tokens_per_s": _round(output_tokens_done / makespan_s) if makespan_s > 0 else None,
        "offered_rps": _round((n - 1) / arrival_span_s) if arrival_span_s > 0 else None,
        "output_tokens_completed": output_tokens_done,
        "preemptions": int(preemptions.sum()),
        "requests_preempted": int((preemptions > 0).sum()),
        # Block counts and evictions are added by the caches (simulator/result.py).
        "prefix_cache": {"cached_tokens": int(cached.sum()),
                         "hit_rate_tokens": _round(cached.sum() / prompt_total) if prompt_total else 0.0},
        "simulated_s": _round(simulated_s),
        "wall_s": _round(wall_s),
    }
    summary.update(_iteration_summary(iters))
    return summary


def _iteration_summary(iters: IterationRecords | None) -> dict:
    if iters is None or len(iters.start_s) == 0:
        return {"num_iterations": 0, "batch_size_mean": None, "batch_size_max": None,
                "iteration_s": latency_stats(np.empty(0))}
    first_stage = np.asarray(iters.stage) == 0
    batch = np.asarray(iters.batch_size)
    batch = batch if first_stage.all() else batch[first_stage]  # (no copy of tens of millions of rows)
    return {
        "num_iterations": int(first_stage.sum()),
        "batch_size_mean": _round(batch.mean()) if len(batch) else None,
        "batch_size_max": int(batch.max()) if len(batch) else None,
        # Boolean indexing copies: the copy is ours to reorder.
        "iteration_s": latency_stats(np.asarray(iters.duration_s)[first_stage], overwrite=True),
    }


def summary_json(summary: dict) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, no NaN (they are null already)."""
    return json.dumps(summary, sort_keys=True, indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------- files


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


RESULT_FILES = ("requests.parquet", "iterations.parquet", "token_times.parquet", "summary.json", "trace.json")


def prepare_output_dir(out_dir: str | Path) -> Path:
    """Ready `out_dir` for one run's result files before the run starts, and return it as a Path.

    Creates it if missing and proves it writable (ConfigError naming the directory otherwise, rather than
    an OSError once the simulation is done), and removes the result files an earlier run left there: a
    run into a used directory replaces that run's results whether it completes or fails, so one
    directory never holds the results of one run beside the config of another.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    except OSError as e:
        raise ConfigError(f"output directory {out}: cannot write result files there "
                          f"({e.strerror or e})") from None
    return out


# The token and iteration tables are written this many rows at a time (about 10 and 45 MB as DataFrames).
WRITE_ROWS_PER_CHUNK = 1 << 19

# zstd instead of Parquet's default snappy: the whole conversation trace's tables shrink from 19.5 to
# 16.2 MB (token times alone 8.1 -> 5.8 MB), read back by pandas/pyarrow as before.
PARQUET_COMPRESSION = "zstd"


def write_outputs(out_dir: str | Path, records: RequestRecords, iters: IterationRecords | None,
                  summary: dict, trace: bool = True, rows_per_chunk: int = WRITE_ROWS_PER_CHUNK) -> dict[str, Path]:
    """Write a run's result files into `out_dir` (created if missing) and return their paths:

    requests.parquet (request_table), iterations.parquet (iteration_table), token_times.parquet
    (token_times_table), summary.json (summary_json), and with `trace` trace.json (Perfetto/Chrome trace;
    open it in ui.perfetto.dev; about 25 MB per 100,000 iterations). Simulations pass their config's
    `trace` (off by default); real-GPU runs (simulator/execute) keep this function's default.
    The token and iteration tables are written about `rows_per_chunk` rows at a time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [name for name in RESULT_FILES if name != "trace.json" or trace]
    paths = {name: out / name for name in names}
    # Each file is written whole or not at all (a kill mid-write leaves the previous one).
    write_atomically(paths["requests.parquet"],
                     lambda temp: request_table(records).to_parquet(temp, index=False,
                                                                     compression=PARQUET_COMPRESSION))
    # The token and iteration tables have a row per output token and per iteration (hundreds of millions
    # for a million requests): they are written a chunk of rows at a time, never built whole.
    offsets = np.asarray(records.token_offsets, dtype=np.int64)
    token_chunks = (token_times_table(records, lo, hi) for lo, hi in _request_chunks(offsets, rows_per_chunk))
    write_atomically(paths["token_times.parquet"],
                     lambda temp: _write_parquet_chunks(temp, token_chunks, token_times_table(records, 0, 0)))
    if iters is None:
        iters = IterationRecords(*(np.empty(0, dtype=np.int64) for _ in fields(IterationRecords)))
    iteration_chunks = (iteration_table(iters, lo, lo + rows_per_chunk)
                        for lo in range(0, len(iters), rows_per_chunk))
    write_atomically(paths["iterations.parquet"],
                     lambda temp: _write_parquet_chunks(temp, iteration_chunks, iteration_table(iters, 0, 0)))
    write_text_atomically(paths["summary.json"], summary_json(summary))
    if trace:
        write_atomically(paths["trace.json"], lambda temp: write_chrome_trace(temp, iters))
    return paths


def _write_parquet_chunks(path: Path, chunks, empty: pd.DataFrame) -> None:
    """One parquet file from DataFrames of the same columns, one after another: what
    pd.concat(chunks).to_parquet(path, index=False) writes (`empty` when there are no chunks), holding
    one chunk at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression=PARQUET_COMPRESSION)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        empty.to_parquet(path, index=False, compression=PARQUET_COMPRESSION)


# ----------------------------------------------------------------------------- terminal


def _prefix_cache_line(prefix_cache: dict) -> list[str]:
    """The summary's prefix-cache line, or none when nothing was cached (no cache, or no shared prefix)."""
    if not prefix_cache.get("cached_tokens") and not prefix_cache.get("evictions"):
        return []
    return [(f"prefix cache {prefix_cache['cached_tokens']:,} prompt tokens cached "
             f"({100 * (prefix_cache.get('hit_rate_tokens') or 0):.1f} %), "
             f"{prefix_cache.get('evictions', 0):,} blocks evicted")]


def format_summary(summary: dict) -> str:
    """A multi-line, human-readable table of `summary` for the terminal (times in ms, E2E in s)."""
    def number(x, scale=1.0, digits=1):
        return "-" if x is None else f"{x * scale:,.{digits}f}"

    rejected = summary["rejected"]
    # wall_s counts building the predictor too: a first run's fit of the runtime model is not simulation.
    build_s = summary.get("predictor_build_s") or 0.0
    simulation_wall_s = None if summary["wall_s"] is None else summary["wall_s"] - build_s
    reasons = ", ".join(f"{c:,}: {r}" for r, c in sorted(summary["rejected_by_reason"].items()))
    lines = [
        (f"requests    {summary['num_requests']:,} arrived, {summary['completed']:,} completed, "
         f"{summary['unfinished']:,} unfinished, {rejected:,} rejected" + (f" ({reasons})" if reasons else "")),
        (f"throughput  {number(summary['throughput_rps'], digits=3)} req/s, "
         f"{number(summary['output_tokens_per_s'])} output tokens/s "
         f"(offered {number(summary['offered_rps'], digits=3)} req/s)"),
        f"preemptions {summary['preemptions']:,} ({summary['requests_preempted']:,} requests)",
        *_prefix_cache_line(summary.get("prefix_cache") or {}),
        (f"iterations  {summary['num_iterations']:,}, mean batch {number(summary['batch_size_mean'])}, "
         f"max batch {summary['batch_size_max'] if summary['batch_size_max'] is not None else '-'}"),
        f"time        {number(summary['simulated_s'])} s simulated in {number(simulation_wall_s, digits=2)} s"
        + (f" (+ {build_s:,.2f} s to fit or load the runtime model)" if build_s >= 0.01 else ""),
        "",
        f"{'latency':<22}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    rows = [("TTFT (ms)", "ttft_s", 1e3), ("TBT (ms)", "tbt_s", 1e3), ("TPOT (ms)", "tpot_s", 1e3),
            ("queueing delay (ms)", "queueing_delay_s", 1e3), ("E2E (s)", "e2e_s", 1.0),
            ("E2E per token (ms)", "normalized_e2e_s_per_token", 1e3), ("iteration (ms)", "iteration_s", 1e3)]
    for label, key, scale in rows:
        stats = summary[key]
        cells = "".join(f"{number(stats[k], scale, 2 if scale == 1.0 else 1):>10}"
                        for k in ("mean", "p50", "p90", "p99", "max"))
        lines.append(f"{label:<22}{cells}")
    return "\n".join(lines)


# A queue that grows for the whole run is overload, not a burst: its longest wait is a sizeable share of
# the time over which requests arrived.
OVERLOAD_QUEUEING_SHARE = 0.1
OVERLOAD_MIN_QUEUEING_S = 1.0
# Rejections worth a note: the default run rejects 1 of 19,366 requests, which changes nothing.
REJECTED_SHARE_NOTED = 0.01


def load_notes(summary: dict) -> list[str]:
    """Why a run may not show what it was meant to, one line each (empty when nothing stands out):
    requests rejected before running (1 % or more of them), and an offered rate above what the cluster
    served (its queue grew through the run, so every latency includes a growing wait)."""
    notes = []
    n, rejected = summary["num_requests"], summary["rejected"]
    if rejected >= REJECTED_SHARE_NOTED * n:
        notes.append(f"{rejected:,} of {n:,} requests ({rejected / n:.1%}) were rejected and are left out of every "
                     f"latency; workload.max_prompt_tokens / workload.max_output_tokens clip long requests instead")
    offered, served = summary.get("offered_rps"), summary.get("throughput_rps")
    longest_wait_s = summary["queueing_delay_s"]["max"]
    if offered and served and longest_wait_s is not None and n > 1:
        arrival_span_s = (n - 1) / offered
        if longest_wait_s > max(OVERLOAD_QUEUEING_SHARE * arrival_span_s, OVERLOAD_MIN_QUEUEING_S):
            notes.append(f"overloaded: requests arrived at {offered:.3g} req/s but were served at {served:.3g} req/s, "
                         f"so the queue grew (longest wait {longest_wait_s:,.1f} s); lower workload.rate_scale "
                         f"(trace replay) or workload.rate_qps, or add replicas. servesim-capacity finds the "
                         f"highest rate that meets the SLOs")
    return notes
