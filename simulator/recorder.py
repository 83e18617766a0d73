"""Collects what the replicas did, in growing numpy buffers, and turns it into metrics' records.

Iterations are rows (or runs of decode rows). Token emissions are logged per event, not per token: "these
request ids each emitted one token at each of these instants". Expanding that log into every token's
emission time, request by request, happens once at the end, vectorised.
"""
from __future__ import annotations

import numpy as np

from simulator.kv_cache import decode_run_blocks_used
from simulator.metrics import IterationRecords, RequestRecords
from simulator.request import NOT_YET, RequestState


# Columns of an iteration row, in IterationRecords' order (times in integer nanoseconds here).
ITERATION_COLUMNS = ("replica_id", "stage", "start_ns", "duration_ns", "batch_size", "num_prefill_tokens",
                     "num_decode_tokens", "kv_blocks_used")


class Recorder:
    """Iteration rows and token emissions of one simulation.

    Appends are O(1) Python list operations (this runs once per iteration); `iteration_records` and
    `token_times` build the numpy columns once, at the end.
    """

    def __init__(self, kv_block_size: int):
        self.kv_block_size = kv_block_size
        self._rows: list[tuple] = []  # single iterations, ITERATION_COLUMNS order
        # decode runs: (replica_id, batch_size, end_ns, duration_ns, kv blocks used at start, spare slots)
        self._runs: list[tuple] = []
        self._emit_times: list = []  # per emission event: an int instant or an array of instants
        self._emit_ids: list[np.ndarray] = []  # per emission event: the request ids that emitted
        self._emit_steps: list[int] = []  # instants in the event (1 unless a decode run)

    def add_iteration(self, replica_id: int, stage: int, start_ns: int, duration_ns: int, batch_size: int,
                      num_prefill_tokens: int, num_decode_tokens: int, kv_blocks_used: int) -> None:
        """One stage of one iteration (for pp=1, the iteration)."""
        self._rows.append((replica_id, stage, start_ns, duration_ns, batch_size, num_prefill_tokens,
                           num_decode_tokens, kv_blocks_used))

    def add_decode_run(self, replica_id: int, end_ns: np.ndarray, duration_ns: np.ndarray, batch_size: int,
                       kv_blocks_used_at_start: int, spare_slots: np.ndarray) -> None:
        """Consecutive decode-only iterations of a pp=1 replica (arrays with one entry per step). The
        blocks in use at each step follow from the requests' spare slots (kv_cache.decode_run_blocks_used)."""
        self._runs.append((replica_id, batch_size, end_ns, duration_ns, kv_blocks_used_at_start, spare_slots))

    def emit(self, request_ids: np.ndarray, time_ns: int) -> None:
        """Each of `request_ids` emitted one token at `time_ns`. The array must not be modified later."""
        self._emit_ids.append(request_ids)
        self._emit_times.append(time_ns)
        self._emit_steps.append(1)

    def emit_run(self, request_ids: np.ndarray, times_ns: np.ndarray) -> None:
        """Each of `request_ids` emitted one token at every instant of `times_ns` (ascending)."""
        self._emit_ids.append(request_ids)
        self._emit_times.append(times_ns)
        self._emit_steps.append(len(times_ns))

    def token_times(self, num_requests: int, chunk_tokens: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
        """Every emitted token's time (seconds), request after request, and CSR offsets (num_requests + 1).

        Expanded in chunks of about `chunk_tokens` tokens to bound temporary memory.
        """
        if not self._emit_ids:
            return np.empty(0), np.zeros(num_requests + 1, np.int64)
        event_steps = np.asarray(self._emit_steps, np.int64)
        event_first = np.cumsum(event_steps) - event_steps  # index of each event's first instant
        # Instants, event after event: single iterations logged one int, decode runs an array.
        is_single = [not isinstance(t, np.ndarray) for t in self._emit_times]
        times_ns = np.empty(int(event_steps.sum()), np.int64)
        in_run = np.ones(len(times_ns), bool)
        single_first = event_first[np.array(is_single)]
        in_run[single_first] = False
        times_ns[single_first] = [t for t, single in zip(self._emit_times, is_single) if single]
        if in_run.any():
            times_ns[in_run] = np.concatenate([t for t, single in zip(self._emit_times, is_single) if not single])
        sizes = np.fromiter((len(ids) for ids in self._emit_ids), np.int64, len(self._emit_ids))
        ids = np.concatenate(self._emit_ids)
        order = np.argsort(ids, kind="stable")  # events were logged in time order per request
        ids = ids[order]
        first = np.repeat(event_first, sizes)[order]
        steps = np.repeat(event_steps, sizes)[order]
        del order
        counts = np.bincount(ids, weights=steps, minlength=num_requests).astype(np.int64)
        offsets = np.zeros(num_requests + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        token_ends = np.cumsum(steps)  # end of each (request, event) pair in the token array
        token_times_s = np.empty(int(offsets[-1]), np.float64)
        pair = 0
        while pair < len(steps):
            # Take pairs until about chunk_tokens tokens.
            stop = int(np.searchsorted(token_ends, token_ends[pair] - steps[pair] + chunk_tokens, side="right"))
            stop = max(stop, pair + 1)
            lo = int(token_ends[pair] - steps[pair])
            hi = int(token_ends[stop - 1])
            local_starts = token_ends[pair:stop] - steps[pair:stop] - lo
            instant = np.repeat(first[pair:stop] - local_starts, steps[pair:stop]) + np.arange(hi - lo)
            token_times_s[lo:hi] = times_ns[instant] / 1e9
            pair = stop
        return token_times_s, offsets

    def iteration_records(self) -> IterationRecords:
        """All iteration rows, sorted by start time (then replica, then stage)."""
        columns = {name: [] for name in ITERATION_COLUMNS}
        if self._rows:
            rows = np.array(self._rows, dtype=np.int64).reshape(-1, len(ITERATION_COLUMNS))
            for i, name in enumerate(ITERATION_COLUMNS):
                columns[name].append(rows[:, i])
        if self._runs:
            steps = np.fromiter((len(run[2]) for run in self._runs), np.int64, len(self._runs))
            replica, batch = (np.repeat(np.fromiter((run[i] for run in self._runs), np.int64, len(self._runs)), steps)
                              for i in (0, 1))
            columns["replica_id"].append(replica)
            columns["stage"].append(np.zeros(len(replica), np.int64))
            durations = np.concatenate([run[3] for run in self._runs])
            columns["start_ns"].append(np.concatenate([run[2] for run in self._runs]) - durations)
            columns["duration_ns"].append(durations)
            columns["batch_size"].append(batch)
            columns["num_prefill_tokens"].append(np.zeros(len(replica), np.int64))
            columns["num_decode_tokens"].append(batch)
            columns["kv_blocks_used"].append(decode_run_blocks_used(
                np.fromiter((run[4] for run in self._runs), np.int64, len(self._runs)),
                [run[5] for run in self._runs], steps, self.kv_block_size))
        cols = {name: np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
                for name, parts in columns.items()}
        order = np.lexsort((cols["stage"], cols["replica_id"], cols["start_ns"]))
        cols = {name: values[order] for name, values in cols.items()}
        return IterationRecords(
            replica_id=cols["replica_id"], stage=cols["stage"], start_s=cols["start_ns"] / 1e9,
            duration_s=cols["duration_ns"] / 1e9, batch_size=cols["batch_size"],
            num_prefill_tokens=cols["num_prefill_tokens"], num_decode_tokens=cols["num_decode_tokens"],
            kv_blocks_used=cols["kv_blocks_used"],
        )

    def request_records(self, requests: RequestState) -> RequestRecords:
        token_times_s, token_offsets = self.token_times(len(requests))

        def seconds(ns: np.ndarray) -> np.ndarray:
            return np.where(ns == NOT_YET, np.nan, ns / 1e9)

        return RequestRecords(
            request_id=np.arange(len(requests), dtype=np.int64), replica_id=requests.replica_id.copy(),
            arrived_s=requests.arrived_ns / 1e9, prompt_tokens=requests.prompt_tokens.copy(),
            output_tokens=requests.output_tokens.copy(),
            first_scheduled_s=seconds(requests.first_scheduled_ns), first_token_s=seconds(requests.first_token_ns),
            completed_s=seconds(requests.completed_ns), preemptions=requests.preemptions.copy(),
            rejected=requests.rejected, reject_reason=requests.reject_reason.copy(),
            token_times_s=token_times_s, token_offsets=token_offsets,
        )
