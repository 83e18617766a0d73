"""One model replica as SimPy processes: ask the policy for a batch, hold for its predicted time, apply it.

pp = 1: one process loops over iterations. A run of decode-only iterations that nothing can change
(no arrival, no request finishing, no KV block shortage) is advanced in one step: its iteration times
come from `predictor.decode_run_stage_times_s`, every token keeps its exact time, and an arrival
interrupts the run at the end of the iteration in progress. `fast_decode_runs=False` steps one iteration
at a time instead; both give identical results (tests/simulator/test_fast_path.py).

pp > 1: one process per pipeline stage and one policy instance per stage ("virtual engines", as in
vLLM's pipeline-parallel scheduler, each with 1/pp of the KV blocks). Stage 0 takes a micro-batch from
the next engine whose previous micro-batch has left the pipeline; each stage holds it for its own time
and passes it on; the last stage applies its effects. Uneven micro-batches leave stages idle: pipeline
bubbles appear in the iteration records by themselves.

All times are integer nanoseconds of simulated time.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np
import simpy

from policies.base import Batch, Policy
from simulator.kv_cache import KVCache
from simulator.predictor import IterationTimePredictor
from simulator.recorder import Recorder
from simulator.request import NOT_YET, RequestState


def seconds_to_duration_ns(seconds: np.ndarray) -> np.ndarray:
    """Predicted seconds to whole nanoseconds, at least 1 so simulated time always moves forward."""
    duration_ns = np.rint(seconds * 1e9).astype(np.int64)
    return np.maximum(duration_ns, 1, out=duration_ns)


def second_to_duration_ns(seconds: float) -> int:
    """`seconds_to_duration_ns` of one value, in plain Python (round() also rounds half to even)."""
    return max(round(float(seconds) * 1e9), 1)


SHORT_RUN_STEPS = 32  # measured: Sarathi-Serve's event loop 3.36 -> 3.22 s, vLLM's 2.53 -> 2.46 s


def step_ends_ns(seconds: np.ndarray, start_ns: int) -> list[int]:
    """End instants of back-to-back steps lasting `seconds` each, the first starting at start_ns.

    Each duration is rounded as `seconds_to_duration_ns` does, and the sums are integer sums, so these are
    exactly the instants that stepping one iteration at a time reaches. A list: the caller reads a few of
    them one at a time. Runs of up to SHORT_RUN_STEPS steps (most of them: half of all runs ask for fewer
    than 25 steps) are summed in plain Python, where numpy's six calls cost more than the arithmetic.
    """
    if len(seconds) <= SHORT_RUN_STEPS:
        ends, end = [], start_ns
        for s in seconds.tolist():
            end += max(round(s * 1e9), 1)  # second_to_duration_ns, inlined
            ends.append(end)
        return ends
    ends = seconds_to_duration_ns(seconds)
    ends[0] += start_ns
    return ends.cumsum().tolist()


@dataclass
class Scheduled:
    """A batch as it starts: its requests' state then (what the predictor and the batch's effects need).

    Lists of Python ints with one entry per request, in batch order. Batches are small (median 5-7
    requests on the conversation trace), and a numpy call (about a microsecond) would cost more than
    its arithmetic.
    """

    engine: int
    batch: Batch
    request_ids: list[int]
    num_tokens: list[int]  # tokens each computes in this batch
    kv_tokens: list[int]  # each request's KV tokens before the batch (the predictor's kv_tokens)
    generated: list[int]  # output tokens each had emitted before the batch
    output: list[int]  # output tokens each emits in all
    pending: list[int]  # tokens each had to compute before emitting its next one
    num_decode: int  # requests that decode (compute the one token they emitted last)
    kv_blocks_used: int  # on the whole replica, after the policy's allocations
    kv_blocks_cached: int  # on the whole replica: free blocks keeping prefix-cached KV
    stage_ns: list[int] | None = None  # time on each pipeline stage (pp > 1)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(self.num_tokens) - self.num_decode


@dataclass
class DecodeRun:
    """A run of decode iterations advanced in one step (pp = 1), while it lasts.

    Stepping takes a KV block when an iteration starts; the run takes its iterations' blocks when it ends,
    or earlier, up to the iteration in progress, when someone reads the cache mid-run (Replica.catch_up):
    a router asking a prefix cache what it holds then sees the blocks those iterations evicted."""

    kv: KVCache  # the engine's
    request_ids: list[int]
    spare_slots: list[int]  # each request's free token slots when the run started
    ends: list[int]  # each iteration's end (ns); cut short when the run is
    planned_steps: int
    steps_taken: int = 0  # iterations whose blocks are taken (the first's are the policy's: none new)

    def take_blocks(self, num_steps: int) -> None:
        """Take the blocks of iterations up to `num_steps` not taken yet."""
        if num_steps > self.steps_taken:
            self.kv.take_decode_run_blocks(self.request_ids, self.spare_slots, num_steps, self.steps_taken)
            self.steps_taken = num_steps

    def blocks_still_to_take(self) -> int:
        """Blocks the planned iterations will still take."""
        spare, kv = self.spare_slots, self.kv
        return kv.decode_run_blocks(spare, self.planned_steps) - kv.decode_run_blocks(spare, self.steps_taken)


class Replica:
    """A model replica: `engines` are its policy instances (one, or one per pipeline stage)."""

    def __init__(self, env: simpy.Environment, replica_id: int, engines: list[Policy],
                 predictor: IterationTimePredictor, requests: RequestState, recorder: Recorder,
                 fast_decode_runs: bool = True):
        self.env = env
        self.replica_id = replica_id
        self.engines = engines
        self.predictor = predictor
        self.requests = requests
        self.recorder = recorder
        self.fast_decode_runs = fast_decode_runs
        self.num_stages = predictor.num_stages
        self.outstanding_requests = 0  # routed here and not finished (the router reads these two)
        self.outstanding_tokens = 0  # prompt + output tokens of those requests
        self.completed = 0
        self._wake: simpy.Event | None = None  # set while stage 0 waits for work
        self._in_decode_run = False
        self.decode_run: DecodeRun | None = None  # the run of decodes in progress (pp = 1)
        if self.num_stages == 1:
            self._process = env.process(self._serve())
        else:
            self._in_flight = [False] * len(engines)
            self._next_engine = 0
            self._queues = [simpy.Store(env) for _ in range(self.num_stages)]
            env.process(self._first_stage())
            for stage in range(1, self.num_stages):
                env.process(self._later_stage(stage))

    # --- requests coming in ------------------------------------------------------------------------

    def add_request(self, request_id: int) -> None:
        """Take a routed request: it joins the engine with the fewest unfinished requests (vLLM's rule)."""
        engines = self.engines
        engine = engines[0] if len(engines) == 1 else min(engines, key=lambda e: e.num_unfinished)
        engine.add_request(request_id)
        ints = self.requests.ints
        ints.replica_id[request_id] = self.replica_id
        self.outstanding_requests += 1
        self.outstanding_tokens += ints.prompt_tokens[request_id] + ints.output_tokens[request_id]
        self._notify()

    def catch_up(self) -> None:
        """Bring the KV caches to the present for a reader from outside (the router): a run of decodes in
        progress takes the blocks its iterations have taken by now, the one in progress included, as
        stepping one iteration at a time would have."""
        run = self.decode_run
        if run is not None:
            run.take_blocks(min(bisect_left(run.ends, self.env.now) + 1, len(run.ends)))

    def _notify(self) -> None:
        """Something changed for the schedulers: wake stage 0 if it is idle, or end a decode run early."""
        if self._wake is not None:
            if not self._wake.triggered:
                self._wake.succeed()
        elif self._in_decode_run:
            self._in_decode_run = False
            self._process.interrupt()

    def _idle(self):
        self._wake = self.env.event()
        yield self._wake
        self._wake = None

    # --- pp = 1 -------------------------------------------------------------------------------------

    def _serve(self):
        env, engine = self.env, self.engines[0]
        fast = self.fast_decode_runs and engine.fast_forward_decodes
        while True:
            changes_before = engine.num_admitted + engine.num_preempted + engine.num_other_changes
            batch = engine.schedule(env.now / 1e9)
            if batch is None:
                yield from self._idle()
                continue
            step = self._scheduled(0, batch)
            # After an admission, a preemption or another change the next choice may differ
            # (Policy.fast_forward_decodes).
            if (fast and step.num_decode == len(step.request_ids)
                    and engine.num_admitted + engine.num_preempted + engine.num_other_changes == changes_before):
                yield from self._decode_run(engine, step)
                continue
            self._check_allocated(step)
            start = env.now
            self._mark_first_scheduled(step.request_ids, start)
            seconds = self.predictor.stage_times_s(batch.num_tokens, step.kv_tokens)[0]
            duration = second_to_duration_ns(seconds)
            self.recorder.add_iteration(self.replica_id, 0, start, duration, len(batch),
                                        step.num_prefill_tokens, step.num_decode, step.kv_blocks_used,
                                        step.kv_blocks_cached)
            yield env.timeout(duration)
            self._apply(step, env.now)

    def _decode_run(self, engine: Policy, step: Scheduled):
        """Decode iterations of the same requests until one finishes, blocks run short or a request comes."""
        env, req, kv = self.env, self.requests, engine.kv
        start, ids = env.now, step.request_ids
        remaining = [o - g for o, g in zip(step.output, step.generated)]  # tokens each has left to emit
        max_steps = min(remaining)
        steps, spare_slots = kv.decode_run_steps(ids, step.kv_tokens, max_steps)
        if min(spare_slots) < 1:  # the first step's slot was not allocated
            self._check_allocated(step)
        ends = step_ends_ns(self.predictor.decode_run_stage_times_s(step.kv_tokens, steps)[:, 0], start)
        end = ends[-1]
        used_at_start = kv.used_blocks
        run = self.decode_run = DecodeRun(kv, ids, spare_slots, ends, steps)
        self._in_decode_run = True
        try:
            yield env.timeout(end - start)
            self._in_decode_run = False
        except simpy.Interrupt:
            # A request arrived: finish the iteration in progress, then let the policy choose again.
            steps = bisect_left(ends, env.now) + 1
            del ends[steps:]
            end = ends[-1]
            yield env.timeout(end - env.now)
        self.recorder.add_decode_run(self.replica_id, start, ends, len(ids), used_at_start, spare_slots,
                                     step.kv_blocks_cached)
        computed, generated = req.ints.computed_tokens, req.ints.generated_tokens
        for r, k, g in zip(ids, step.kv_tokens, step.generated):
            computed[r] = k + steps
            generated[r] = g + steps
        run.take_blocks(steps)
        self.decode_run = None
        self.recorder.emit_run(ids, ends)
        if steps == max_steps:
            self._finish(engine, [r for r, left in zip(ids, remaining) if left == steps], end)

    # --- pp > 1 -------------------------------------------------------------------------------------

    def _first_stage(self):
        env = self.env
        while True:
            picked = self._next_micro_batch()
            if picked is None:
                yield from self._idle()
                continue
            step = self._scheduled(*picked)
            self._check_allocated(step)
            self._mark_first_scheduled(step.request_ids, env.now)
            stage_s = self.predictor.stage_times_s(step.batch.num_tokens, step.kv_tokens)
            step.stage_ns = [second_to_duration_ns(s) for s in stage_s.tolist()]  # a few stages: plain Python
            yield from self._hold_stage(0, step)
            self._queues[1].put(step)

    def _next_micro_batch(self) -> tuple[int, Batch] | None:
        """Round robin over engines whose previous micro-batch has left the pipeline."""
        n = len(self.engines)
        for i in range(n):
            e = (self._next_engine + i) % n
            if self._in_flight[e]:
                continue
            batch = self.engines[e].schedule(self.env.now / 1e9)
            if batch is not None:
                self._in_flight[e] = True
                self._next_engine = (e + 1) % n
                return e, batch
        return None

    def _later_stage(self, stage: int):
        while True:
            step = yield self._queues[stage].get()
            yield from self._hold_stage(stage, step)
            if stage + 1 < self.num_stages:
                self._queues[stage + 1].put(step)
            else:
                self._apply(step, self.env.now)
                self._in_flight[step.engine] = False
                self._notify()

    def _hold_stage(self, stage: int, step: Scheduled):
        duration = step.stage_ns[stage]
        self.recorder.add_iteration(self.replica_id, stage, self.env.now, duration, len(step.batch),
                                    step.num_prefill_tokens, step.num_decode, step.kv_blocks_used,
                                    step.kv_blocks_cached)
        yield self.env.timeout(duration)

    # --- effects of a batch (both layouts) ----------------------------------------------------------

    def _scheduled(self, engine: int, batch: Batch) -> Scheduled:
        """Snapshot the batch's requests as it starts."""
        ints, ids = self.requests.ints, batch.request_ids
        computed, generated_tokens, prompt = ints.computed_tokens, ints.generated_tokens, ints.prompt_tokens
        kv_tokens = [computed[r] for r in ids]
        generated = [generated_tokens[r] for r in ids]
        pending = [prompt[r] + g - k for r, g, k in zip(ids, generated, kv_tokens)]
        # A policy never computes more than a request's pending tokens, so pending == 1 means one token.
        num_decode = [p for p, g in zip(pending, generated) if g > 0].count(1)
        if len(self.engines) == 1:
            kv = self.engines[0].kv
            kv_used, kv_cached = kv.used_blocks, kv.cached_free_blocks
        else:
            kv_used = sum(e.kv.used_blocks for e in self.engines)
            kv_cached = sum(e.kv.cached_free_blocks for e in self.engines)
        output = ints.output_tokens
        return Scheduled(engine, batch, ids, batch.num_tokens, kv_tokens, generated,
                         [output[r] for r in ids], pending, num_decode, kv_used, kv_cached)

    def _check_allocated(self, step: Scheduled) -> None:
        """A policy must hold KV blocks for every token it schedules; say which policy broke that rule."""
        capacity = self.engines[step.engine].kv.capacity_tokens(step.request_ids)
        short = [r for r, k, n, c in zip(step.request_ids, step.kv_tokens, step.num_tokens, capacity) if k + n > c]
        if short:
            raise RuntimeError(
                f"policy {type(self.engines[step.engine]).__name__} scheduled requests without allocating "
                f"their KV blocks first (kv.allocate / admit / schedule_decodes): {short}")

    def _mark_first_scheduled(self, request_ids: list[int], now_ns: int) -> None:
        first_scheduled_ns = self.requests.ints.first_scheduled_ns
        for r in request_ids:
            if first_scheduled_ns[r] == NOT_YET:
                first_scheduled_ns[r] = now_ns

    def _apply(self, step: Scheduled, end_ns: int) -> None:
        """The batch's tokens are computed: requests that computed all their pending tokens emit the next."""
        ints = self.requests.ints
        emitted, done = [], []
        for r, k, n, p, g, o in zip(step.request_ids, step.kv_tokens, step.num_tokens, step.pending,
                                    step.generated, step.output):
            ints.computed_tokens[r] = k + n
            if n == p:  # it computed its last known token: it emits the next one
                emitted.append(r)
                ints.generated_tokens[r] = g + 1
                if g == 0:
                    ints.first_token_ns[r] = end_ns
                if g + 1 == o:
                    done.append(r)
        if emitted:
            self.recorder.emit(emitted, end_ns)
            self._finish(self.engines[step.engine], done, end_ns)

    def _finish(self, engine: Policy, done: list[int], end_ns: int) -> None:
        """These requests emitted their last token at end_ns: free their KV and take them off the policy."""
        if not done:
            return
        ints = self.requests.ints
        for r in done:
            ints.completed_ns[r] = end_ns
            self.outstanding_tokens -= ints.prompt_tokens[r] + ints.output_tokens[r]
        engine.release(done)
        self.outstanding_requests -= len(done)
        self.completed += len(done)
