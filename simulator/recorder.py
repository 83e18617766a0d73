"""Collects what the replicas did, in growing numpy buffers, and turns it into metrics' records.

Iterations are rows (or runs of decode rows). Token emissions are logged per event, not per token: "these
request ids each emitted one token at each of these instants". Expanding that log into every token's
emission time, request by request, happens once at the end, vectorised.
"""
from __future__ import annotations

from array import array

import numpy as np

from simulator.kv_cache import decode_run_blocks_used
from simulator.metrics import IterationRecords, RequestRecords
from simulator.request import NOT_YET, RequestState, int_list

# Columns of an iteration row, in IterationRecords' order (times in integer nanoseconds here).
ITERATION_COLUMNS = ("replica_id", "stage", "start_ns", "duration_ns", "batch_size", "num_prefill_tokens",
                     "num_decode_tokens", "kv_blocks_used", "kv_blocks_cached")
RUN_COLUMNS = 6  # values per decode run: replica_id, batch_size, steps, blocks used, blocks cached, start


class Recorder:
    """Iteration rows and token emissions of one simulation.

    Everything goes into flat `array.array` buffers of int64 (8 bytes a value, request ids 4; amortised O(1)
    appends, no Python object per row); `pop_iteration_records` and `pop_request_records` build numpy
    columns at the end.
    """

    def __init__(self, kv_block_size: int):
        self.kv_block_size = kv_block_size
        self._rows = array("q")  # single iterations: ITERATION_COLUMNS values each
        # Decode runs: RUN_COLUMNS values per run (replica_id, batch_size, steps, KV blocks used and cached at
        # the start, start instant), the end of every step, and the spare KV slots of every request at the start.
        self._runs = array("q")
        self._run_end_ns = array("q")
        self._run_spare_slots = array("q")
        # Token emissions, per event: how many requests emitted (and which), and at how many instants (when).
        self._emit_sizes = array("q")
        self._emit_ids = array("i")  # request ids: 4 bytes (C int) each, one per request per event
        self._emit_steps = array("q")
        self._emit_times_ns = array("q")

    def add_iteration(self, replica_id: int, stage: int, start_ns: int, duration_ns: int, batch_size: int,
                      num_prefill_tokens: int, num_decode_tokens: int, kv_blocks_used: int,
                      kv_blocks_cached: int = 0) -> None:
        """One stage of one iteration (for pp=1, the iteration)."""
        self._rows.extend((replica_id, stage, start_ns, duration_ns, batch_size, num_prefill_tokens,
                           num_decode_tokens, kv_blocks_used, kv_blocks_cached))

    def add_decode_run(self, replica_id: int, start_ns: int, end_ns, batch_size: int,
                       kv_blocks_used_at_start: int, spare_slots, kv_blocks_cached_at_start: int = 0) -> None:
        """Consecutive decode-only iterations of a pp=1 replica, the first starting at start_ns and each
        starting when the previous ends (end_ns: one end instant per step, a list or an int array). The
        blocks in use at each step follow from the requests' spare slots (a list or an int array, one per
        request; kv_cache.decode_run_blocks_used). Cached blocks are recorded as they were at the start."""
        self._runs.extend((replica_id, batch_size, len(end_ns), kv_blocks_used_at_start, kv_blocks_cached_at_start,
                           start_ns))
        _append(self._run_end_ns, end_ns)
        self._run_spare_slots.fromlist(int_list(spare_slots))

    def emit(self, request_ids, time_ns: int) -> None:
        """Each of `request_ids` (a list or an int array) emitted one token at `time_ns`."""
        self._emit_sizes.append(len(request_ids))
        self._emit_ids.fromlist(int_list(request_ids))
        self._emit_steps.append(1)
        self._emit_times_ns.append(time_ns)

    def emit_run(self, request_ids, times_ns) -> None:
        """Each of `request_ids` (a list or an int array) emitted one token at every instant of `times_ns`
        (ascending; a list or an int array)."""
        self._emit_sizes.append(len(request_ids))
        self._emit_ids.fromlist(int_list(request_ids))
        self._emit_steps.append(len(times_ns))
        _append(self._emit_times_ns, times_ns)

    def token_times(self, num_requests: int, pairs_per_chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
        """Every emitted token's time (seconds), request after request, and CSR offsets (num_requests + 1).

        The log holds (event, request) pairs; they are expanded a range of request ids at a time (about
        `pairs_per_chunk` pairs each, a decode run's pair holding one token per step), so temporary memory
        stays bounded however long the simulation.
        """
        offsets = np.zeros(num_requests + 1, np.int64)
        if not self._emit_sizes:
            return np.empty(0), offsets
        event_steps = np.frombuffer(self._emit_steps, np.int64)
        event_sizes = np.frombuffer(self._emit_sizes, np.int64)
        event_first = np.cumsum(event_steps) - event_steps  # index of each event's first instant
        event_first_pair = np.cumsum(event_sizes) - event_sizes  # index of each event's first pair
        times_ns = np.frombuffer(self._emit_times_ns, np.int64)  # converted a chunk at a time, not copied
        ids = np.frombuffer(self._emit_ids, np.intc)
        token_times_s = np.empty(int((event_steps * event_sizes).sum()), np.float64)
        ids_per_chunk = max(1, int(num_requests * pairs_per_chunk // max(len(ids), 1)))
        for lo in range(0, num_requests, ids_per_chunk):
            hi = min(lo + ids_per_chunk, num_requests)
            pairs = np.flatnonzero((ids >= lo) & (ids < hi))  # in log order, i.e. time order per request
            event = np.searchsorted(event_first_pair, pairs, side="right") - 1
            order = np.argsort(ids[pairs], kind="stable")
            request, event = ids[pairs][order], event[order]
            steps = event_steps[event]
            counts = np.bincount(request - lo, weights=steps, minlength=hi - lo).astype(np.int64)
            np.cumsum(counts, out=offsets[lo + 1: hi + 1])
            offsets[lo + 1: hi + 1] += offsets[lo]
            # Token j of a pair is emitted at its event's instant first + j.
            pair_start = np.cumsum(steps) - steps
            instant = np.repeat(event_first[event] - pair_start, steps)
            instant += np.arange(len(instant))
            # Gathered over the indices and then straight into the output: no other token-sized temporary.
            np.take(times_ns, instant, out=instant)
            np.divide(instant, 1e9, out=token_times_s[offsets[lo]: offsets[hi]])
        return token_times_s, offsets

    def pop_iteration_records(self) -> IterationRecords:
        """All iteration rows, sorted by start time. Empties the iteration buffers, so that their memory is
        free before the token times are built.

        Counts (replica, stage, batch size, tokens, KV blocks) come as int32: a million requests make tens
        of millions of rows, and they are read as numbers, never written back (the tables give int64)."""
        rows = np.frombuffer(self._rows, np.int64).reshape(-1, len(ITERATION_COLUMNS)) if self._rows else \
            np.empty((0, len(ITERATION_COLUMNS)), np.int64)
        runs = np.frombuffer(self._runs, np.int64).reshape(-1, RUN_COLUMNS) if self._runs else \
            np.empty((0, RUN_COLUMNS), np.int64)
        steps = runs[:, 2]
        ends = np.frombuffer(self._run_end_ns, np.int64) if self._run_end_ns else np.empty(0, np.int64)
        # A step of a decode run starts when the one before it ends; the first step at the run's start.
        run_starts = np.empty_like(ends)
        run_starts[1:] = ends[:-1]
        run_starts[np.cumsum(steps) - steps] = runs[:, 5]
        start_ns = np.concatenate([rows[:, 2], run_starts])
        # Both row groups are nearly in time order already: a stable sort merges them quickly.
        order = np.argsort(start_ns, kind="stable")

        def column(single, per_step, dtype) -> np.ndarray:
            """Single rows' values then the decode steps', in start order, as `dtype` (one column at a
            time, so that the temporaries are one column's)."""
            return np.concatenate([single, per_step], dtype=dtype)[order]

        start_s = start_ns[order] / 1e9
        del start_ns
        np.subtract(ends, run_starts, out=run_starts)  # now the steps' durations
        duration_s = column(rows[:, 3], run_starts, np.float64)
        duration_s /= 1e9
        del run_starts
        no_steps = np.zeros(len(ends), np.int32)
        batch_per_step = np.repeat(runs[:, 1].astype(np.int32), steps)
        # Without a prefix cache keeping anything there is no cached-blocks column to build, sort and carry.
        any_cached = bool(rows[:, -1].any() or runs[:, 4].any())
        spare_slots = np.frombuffer(self._run_spare_slots, np.int64) if self._run_spare_slots else np.empty(0, np.int64)
        records = IterationRecords(
            replica_id=column(rows[:, 0], np.repeat(runs[:, 0].astype(np.int32), steps), np.int32),
            stage=column(rows[:, 1], no_steps, np.int32), start_s=start_s, duration_s=duration_s,
            batch_size=column(rows[:, 4], batch_per_step, np.int32),
            num_prefill_tokens=column(rows[:, 5], no_steps, np.int32),
            num_decode_tokens=column(rows[:, 6], batch_per_step, np.int32),
            kv_blocks_used=column(rows[:, 7], decode_run_blocks_used(runs[:, 3], spare_slots, runs[:, 1], steps,
                                                                      self.kv_block_size), np.int32),
            kv_blocks_cached=column(rows[:, -1], np.repeat(runs[:, 4], steps), np.int32) if any_cached else None,
        )
        del rows, runs, steps, ends, spare_slots, no_steps, batch_per_step  # the buffers' views, then them
        self._rows, self._runs, self._run_end_ns, self._run_spare_slots = (array("q") for _ in range(4))
        return records

    def pop_request_records(self, requests: RequestState) -> RequestRecords:
        """Per-request records with every token's time. Empties the emission buffers."""
        token_times_s, token_offsets = self.token_times(len(requests))
        self._emit_sizes, self._emit_ids = array("q"), array("i")
        self._emit_steps, self._emit_times_ns = array("q"), array("q")

        def seconds(ns: np.ndarray) -> np.ndarray:
            return np.where(ns == NOT_YET, np.nan, ns / 1e9)

        return RequestRecords(
            request_id=np.arange(len(requests), dtype=np.int64), replica_id=requests.replica_id.copy(),
            arrived_s=requests.arrived_ns / 1e9, prompt_tokens=requests.prompt_tokens.copy(),
            output_tokens=requests.output_tokens.copy(),
            first_scheduled_s=seconds(requests.first_scheduled_ns),
            first_token_s=seconds(requests.first_token_ns),
            completed_s=seconds(requests.completed_ns), preemptions=requests.preemptions.copy(),
            rejected=requests.rejected, reject_reason=requests.reject_reason.copy(),
            token_times_s=token_times_s, token_offsets=token_offsets, cached_tokens=requests.cached_tokens.copy(),
        )


def _append(buffer: array, values) -> None:
    """Append int values (a list, as the replica passes them, or an int array) to an int64 buffer."""
    if isinstance(values, list):
        buffer.fromlist(values)
    else:
        buffer.frombytes(np.ascontiguousarray(values, dtype=np.int64).tobytes())
