"""The serving loop of real execution: arrivals on a clock, the simulator's own policy picks each batch,
a runner executes it, and the measured time moves the clock.

One iteration, as a serving engine does it:
  1. requests that have arrived by now join the policy's waiting queue
  2. policy.schedule(now) returns the batch (the same policy classes and KVCache the simulator uses)
  3. the runner computes the batch (TorchModelRunner: a real model on a GPU) and times its parts
  4. its effects are applied exactly as simulator/replica.py applies them: computed tokens, emitted
     tokens, first-token and completion times, KV blocks freed, policy.finish
The iteration lasts from step 1 to the end of step 4, so its duration includes every CPU overhead.

Clocks (`clock=`):
  busy  the clock advances by each iteration's measured duration; when nothing can run it jumps to the
        next arrival. Serving is exactly what a wall clock gives, without the idle waits (the device time
        they would cost measures nothing).
  wall  real time: the loop sleeps until the next arrival.

Request state, the KV block accounting and the tables are the simulator's (RequestState, KVCache,
Recorder, metrics), so an execution's files compare column by column with a simulation's. A policy with a
prefix cache decides hits as in the simulator, and the runner reuses those tokens' K/V for real.
"""
from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from policies.base import Policy
from simulator.kv_cache import KVCache
from simulator.metrics import IterationRecords, RequestRecords, prefix_cache_counts
from simulator.recorder import Recorder
from simulator.request import NOT_YET, RequestState

# Columns of the per-iteration timing table (steps.parquet), besides the iteration index.
STEP_COLUMNS = ("start_s", "duration_s", "batch_size", "num_prefill_tokens", "num_decode_tokens", "path",
                "padded_batch", "schedule_s", "prepare_s", "launch_s", "sync_s", "apply_s", "gpu_s",
                "excluded_s")


class ExecutionError(RuntimeError):
    """The run ended in a state that should be impossible (e.g. a request the policy never served)."""


class ExecutionTimeout(RuntimeError):
    """The run passed its host-time limit (`stop_at`) before every request finished."""


class BusyClock:
    """Integer nanoseconds advanced by measured work; idle gaps are skipped, not waited."""

    name = "busy"

    def __init__(self):
        self._now_ns = 0

    def now_ns(self) -> int:
        return self._now_ns

    def end_iteration(self, start_ns: int, measured_ns: int, excluded_s: float) -> int:
        self._now_ns = start_ns + max(int(measured_ns), 1)
        return self._now_ns

    def wait_until(self, t_ns: int) -> None:
        self._now_ns = max(self._now_ns, t_ns)


class WallClock:
    """Real time since the start (perf_counter), in integer nanoseconds; idle gaps are slept through."""

    name = "wall"

    def __init__(self):
        self._origin_ns = time.perf_counter_ns()

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self._origin_ns

    def end_iteration(self, start_ns: int, measured_ns: int, excluded_s: float) -> int:
        self._origin_ns += int(excluded_s * 1e9)  # graph capture is set-up work: the clock stops for it
        return max(self.now_ns(), start_ns + 1)

    def wait_until(self, t_ns: int) -> None:
        delay_ns = t_ns - self.now_ns()
        if delay_ns > 0:
            time.sleep(delay_ns / 1e9)


CLOCKS = {"busy": BusyClock, "wall": WallClock}


class PredictorRunner:
    """A runner that does no work: each batch lasts what `predictor` says (an IterationTimePredictor).
    With the busy clock the executor then reproduces the simulator exactly (tests use this)."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.slot_holders: list[int] = []

    def execute(self, ids, num_tokens, kv_tokens, prompt_tokens, generated_tokens, reserve_tokens):
        from simulator.execute.runner import StepTiming

        seconds = float(self.predictor.stage_times_s(num_tokens, kv_tokens)[0])
        return StepTiming(path="predicted", padded_batch=len(ids), duration_s=seconds)

    def release(self, request_ids) -> None:
        pass


@dataclass
class ExecutionOutput:
    """What one execution produced: the simulator's record types plus two tables of its own.

    steps         one row per iteration: STEP_COLUMNS (seconds) - where the time of each went
    compositions  one row per (iteration, request): iteration, request_id, num_tokens, kv_tokens - the
                  exact batch, to replay through the runtime model
    """

    records: RequestRecords
    iterations: IterationRecords
    steps: pd.DataFrame
    compositions: pd.DataFrame
    served_s: float
    kv_blocks: int
    prefix_cache: dict | None = None  # the policy's cache's counts (metrics.prefix_cache_counts)


def execute(requests: RequestState, policy: Callable[[KVCache, RequestState], Policy], runner, kv_blocks: int,
            block_size: int = 16, kv_watermark: float = 0.01, clock: str = "busy",
            progress: bool = False, stop_at: float | None = None) -> ExecutionOutput:
    """Serve `requests` (sorted by arrival) on one replica: `policy(kv, requests)` schedules, `runner`
    executes. Requests that can never fit the KV cache are rejected as the simulator rejects them.
    stop_at: a time.perf_counter() value after which the run is abandoned (ExecutionTimeout)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is not one of {', '.join(CLOCKS)}")
    blocks_held = np.zeros(len(requests), dtype=np.int64)
    kv = KVCache(kv_blocks, block_size, blocks_held, int(kv_watermark * kv_blocks))
    engine = policy(kv, requests)
    attach = getattr(runner, "attach", None)
    if attach is not None:  # a real runner follows the content and reuses the policy's prefix hits
        attach(engine.kv, requests)
    too_big = ~kv.can_ever_hold(requests.prompt_tokens + requests.output_tokens)
    requests.reject(too_big, f"prompt + output tokens exceed one KV cache ({kv_blocks} blocks "
                             f"of {block_size} tokens, less the watermark)")
    accepted = np.flatnonzero(~requests.rejected)
    loop = _Loop(requests, engine, runner, Recorder(block_size), CLOCKS[clock]())
    loop.run(accepted, progress, stop_at)
    unfinished = accepted[requests.completed_ns[accepted] == NOT_YET]
    if len(unfinished):
        raise ExecutionError(f"{len(unfinished)} requests never finished (first: request {unfinished[0]})")
    iterations = loop.recorder.pop_iteration_records()
    records = loop.recorder.pop_request_records(requests)
    return ExecutionOutput(records, iterations, loop.steps_table(), loop.compositions_table(),
                           loop.clock.now_ns() / 1e9, kv_blocks, prefix_cache_counts([engine.kv]))


class _Loop:
    def __init__(self, requests: RequestState, engine: Policy, runner, recorder: Recorder, clock):
        self.requests, self.engine, self.runner = requests, engine, runner
        self.recorder, self.clock = recorder, clock
        self.steps = {name: [] for name in STEP_COLUMNS}
        self.comp = {name: array("q") for name in ("iteration", "request_id", "num_tokens", "kv_tokens")}
        self.completed = 0

    def run(self, accepted: np.ndarray, progress: bool, stop_at: float | None = None) -> None:
        req, engine, clock = self.requests, self.engine, self.clock
        arrivals = req.arrived_ns[accepted].tolist()
        accepted = accepted.tolist()
        next_arrival, preemptions_seen = 0, int(req.preemptions.sum())
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(accepted), unit="req", desc=f"executing ({clock.name} clock)",
                       dynamic_ncols=True)
        previous_end = None  # host time the last batch's bookkeeping ended; None after an idle wait
        while self.completed < len(accepted):
            # Host time between two back-to-back iterations (recording the last one) counts towards the next.
            t0 = previous_end if previous_end is not None else time.perf_counter_ns()
            start_ns = clock.now_ns()
            while next_arrival < len(accepted) and arrivals[next_arrival] <= start_ns:
                r = accepted[next_arrival]
                engine.add_request(r)
                req.replica_id[r] = 0
                next_arrival += 1
            batch = engine.schedule(start_ns / 1e9)
            if batch is None:
                if next_arrival >= len(accepted):
                    break  # nothing runs and nothing will arrive: the caller reports the stuck requests
                clock.wait_until(arrivals[next_arrival])
                previous_end = None
                continue
            preemptions = int(req.preemptions.sum())
            if preemptions != preemptions_seen:  # preempted requests lost their KV: free their slots
                preemptions_seen = preemptions
                self.runner.release([r for r in self.runner.slot_holders if engine.kv.blocks_held[r] == 0])
            ids, num_tokens = np.array(batch.request_ids, np.int64), np.array(batch.num_tokens, np.int64)
            kv_tokens, generated = req.computed_tokens[ids], req.generated_tokens[ids]
            pending = req.prompt_tokens[ids] + generated - kv_tokens
            self._check_allocated(ids, num_tokens, kv_tokens)
            unseen = ids[req.first_scheduled_ns[ids] == NOT_YET]
            req.first_scheduled_ns[unseen] = start_ns
            kv_blocks_used, kv_blocks_cached = engine.kv.used_blocks, engine.kv.cached_free_blocks
            t1 = time.perf_counter_ns()
            timing = self.runner.execute(ids, num_tokens, kv_tokens, req.prompt_tokens[ids], generated,
                                         req.prompt_tokens[ids] + req.output_tokens[ids])
            t2 = time.perf_counter_ns()
            emitted, done = self._apply(ids, num_tokens, kv_tokens, generated, pending)
            t3 = time.perf_counter_ns()
            if timing.duration_s is not None:  # a runner that only predicts: its time is the iteration's
                measured_ns = max(round(timing.duration_s * 1e9), 1)
            else:
                measured_ns = t3 - t0 - int(timing.excluded_s * 1e9)
            end_ns = clock.end_iteration(start_ns, measured_ns, timing.excluded_s)
            self._record(ids, num_tokens, kv_tokens, generated, pending, emitted, done, start_ns, end_ns,
                         (kv_blocks_used, kv_blocks_cached), timing, (t1 - t0) / 1e9, (t3 - t2) / 1e9)
            if bar is not None and len(done):
                bar.update(len(done))
            previous_end = time.perf_counter_ns()
            if stop_at is not None and previous_end / 1e9 > stop_at:
                raise ExecutionTimeout(f"stopped after {len(self.steps['start_s'])} iterations: "
                                       f"{self.completed} of {len(accepted)} requests finished")
        if bar is not None:
            bar.close()

    def _check_allocated(self, ids, num_tokens, kv_tokens) -> None:
        kv = self.engine.kv
        shortfall = kv_tokens + num_tokens - kv.blocks_held[ids] * kv.block_size
        if max(shortfall.tolist()) > 0:
            raise ExecutionError(f"policy {type(self.engine).__name__} scheduled requests without allocating "
                                 f"their KV blocks first: {ids[shortfall > 0].tolist()}")

    def _apply(self, ids, num_tokens, kv_tokens, generated, pending):
        """The batch's state changes (simulator/replica.py's rule): requests that computed all their
        pending tokens emit one; those that reached their output length finish and free their KV."""
        req = self.requests
        req.computed_tokens[ids] = kv_tokens + num_tokens
        emits = num_tokens == pending
        emitted = ids[emits]
        done = emitted[0:0]
        if len(emitted):
            req.generated_tokens[emitted] = generated[emits] + 1
            done = emitted[req.generated_tokens[emitted] == req.output_tokens[emitted]]
            if len(done):
                self.engine.release(done)
                self.runner.release(done.tolist())
        return emitted, done

    def _record(self, ids, num_tokens, kv_tokens, generated, pending, emitted, done, start_ns, end_ns,
                kv_blocks, timing, schedule_s, apply_s) -> None:
        """kv_blocks: (used, cached and free) when the batch was scheduled."""
        req = self.requests
        if len(emitted):
            first = emitted[req.generated_tokens[emitted] == 1]
            req.first_token_ns[first] = end_ns
            self.recorder.emit(emitted, end_ns)
        if len(done):
            req.completed_ns[done] = end_ns
            self.completed += len(done)
        num_decode = int(np.count_nonzero((pending == 1) & (generated > 0)))
        num_prefill = int(num_tokens.sum()) - num_decode
        self.recorder.add_iteration(0, 0, start_ns, end_ns - start_ns, len(ids), num_prefill, num_decode,
                                    *kv_blocks)
        iteration = len(self.steps["start_s"])
        values = (start_ns / 1e9, (end_ns - start_ns) / 1e9, len(ids), num_prefill, num_decode, timing.path,
                  timing.padded_batch, schedule_s, timing.prepare_s, timing.launch_s, timing.sync_s, apply_s,
                  timing.gpu_s, timing.excluded_s)
        for name, value in zip(STEP_COLUMNS, values):
            self.steps[name].append(value)
        self.comp["iteration"].extend([iteration] * len(ids))
        self.comp["request_id"].frombytes(ids.astype(np.int64).tobytes())
        self.comp["num_tokens"].frombytes(num_tokens.astype(np.int64).tobytes())
        self.comp["kv_tokens"].frombytes(kv_tokens.astype(np.int64).tobytes())

    def steps_table(self) -> pd.DataFrame:
        table = pd.DataFrame(self.steps)
        table.insert(0, "iteration", np.arange(len(table), dtype=np.int64))
        return table

    def compositions_table(self) -> pd.DataFrame:
        return pd.DataFrame({name: np.frombuffer(values, np.int64) for name, values in self.comp.items()})
