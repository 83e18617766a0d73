"""Time between tokens (TBT): every gap of every request, in chunks, in one array, or streamed for very
large runs (StreamedGaps), and per-request TBT percentiles."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.metrics.records import PERCENTILES, RequestRecords, _round, _tokens_per_request, check_records

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
