"""Disaggregated serving as SimPy processes: a prefill pool, a decode pool, and the KV hand-off between them.

A request's life (DistServe / Splitwise):
  1. The prefill router sends it to a prefill replica, whose policy (vLLM: whole prompts; Sarathi:
     chunks) computes its prompt. The iteration that finishes the prompt emits the first token; the
     request then leaves the prefill scheduler but its KV blocks stay on the prefill replica.
  2. Hand-off: the decode router picks a decode replica. The request waits, first come first served,
     until that replica's KV cache can take prompt + 1 tokens (the prompt's KV and the slot of the first
     decode step), admitted like a new request (the watermark stays free). This is the back-pressure:
     while it waits its prefill KV stays put, so a full decode pool ends up stalling prefills.
  3. Transfer: after the link's latency the prompt's KV bytes cross the prefill replica's link, which
     concurrent transfers share fairly (link.py). With layer streaming the hand-off starts when the
     prompt's last prefill iteration starts, and only the last layer's share waits for its end.
  4. The prefill replica frees the request's blocks; the decode replica's policy receives it with
     computed_tokens = prompt and one token emitted, so its next iteration decodes it.
Requests with one output token are done at step 1 and never move.

The replica classes extend simulator.replica.Replica by overriding four of its methods (`_scheduled`,
`_apply`, `_finish`, `_idle`), each calling Replica's own; the SimPy processes, the fast
decode path and pipeline stages are Replica's.
Replica ids: prefill replicas 0..P-1, decode replicas P..P+D-1 (the iteration table tells pools apart).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy

from policies.base import Batch, Policy
from simulator.cluster import PolicyFactory, SimulationError, _arrivals, _run
from simulator.disagg.link import FairShareLink
from simulator.kv_cache import KVCache
from simulator.metrics import IterationRecords, RequestRecords
from simulator.predictor import IterationTimePredictor
from simulator.recorder import Recorder
from simulator.replica import Replica, Scheduled
from simulator.request import NOT_YET, RequestState
from simulator.router import Router


@dataclass
class PoolParts:
    """One pool, built: `num_replicas` replicas with `kv_blocks` per GPU (the replica's capacity), each
    running `policy` (one engine per pipeline stage, as in a colocated replica) timed by `predictor`."""

    num_replicas: int
    policy: PolicyFactory
    predictor: IterationTimePredictor
    kv_blocks: int
    gpus_per_replica: int = 1
    router: str = "round_robin"


@dataclass
class LinkParts:
    """The link out of each prefill replica. `bandwidth_bytes_per_s` is per GPU port; a transfer uses
    min(prefill GPUs, decode GPUs) ports. `streaming_layers` > 0 turns on layer streaming with that
    many layers (the last layer's share, 1/streaming_layers of the bytes, waits for the prefill's end)."""

    bandwidth_bytes_per_s: float
    latency_s: float = 0.0
    streaming_layers: int = 0


@dataclass
class HandoffRecords:
    """What the hand-off did to each request (int64 ns, NOT_YET where it never happened; -1 ids)."""

    prefill_replica_id: np.ndarray
    decode_replica_id: np.ndarray
    handoff_ns: np.ndarray  # asked the decode pool for KV room (prefill end; last iteration's start if streaming)
    kv_granted_ns: np.ndarray  # the decode replica's KV blocks were reserved
    transfer_done_ns: np.ndarray  # the KV is on the decode replica (its scheduler has the request)
    kv_bytes: np.ndarray  # bytes moved


@dataclass
class DisaggregatedOutput:
    records: RequestRecords
    iterations: IterationRecords
    handoff: HandoffRecords
    simulated_s: float
    kv_blocks_per_engine: dict  # pool name -> blocks of one engine
    pools: dict  # pool name -> PoolParts
    kv_caches: dict  # pool name -> every engine's KVCache (all blocks are back in them at the end)
    links: list  # FairShareLink of each prefill replica (busy_ns, bytes_sent, transfers, max_concurrent)


class PrefillReplica(Replica):
    """A replica whose requests leave the scheduler once their prompt is computed (their KV stays)."""

    def __init__(self, *args, on_prefilled, on_last_prefill_started=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_prefilled = on_prefilled  # (replica, engine, request ids, end_ns)
        self.on_last_prefill_started = on_last_prefill_started  # (replica, engine, request ids), streaming

    def _scheduled(self, engine: int, batch: Batch) -> Scheduled:
        step = super()._scheduled(engine, batch)
        if self.on_last_prefill_started is not None:
            last = [r for r, n, p, g, o in zip(step.request_ids, step.num_tokens, step.pending, step.generated,
                                               step.output) if n == p and g == 0 and o > 1]
            if last:
                self.on_last_prefill_started(self, self.engines[engine], last)
        return step

    def _apply(self, step: Scheduled, end_ns: int) -> None:
        super()._apply(step, end_ns)  # emits first tokens; one-token requests finish (and free) here
        ints = self.requests.ints
        prefilled = [r for r in step.request_ids
                     if ints.generated_tokens[r] == 1 and ints.completed_ns[r] == NOT_YET]
        if not prefilled:
            return
        engine = self.engines[step.engine]
        engine.finish(prefilled)  # out of the scheduler; kv.free comes after the transfer
        self.outstanding_requests -= len(prefilled)
        self.outstanding_tokens -= sum(ints.prompt_tokens[r] + ints.output_tokens[r] for r in prefilled)
        self.on_prefilled(self, engine, prefilled, end_ns)

    def release(self, engine: Policy, request_id: int) -> None:
        """The request's KV has left: free its blocks and let the scheduler use them."""
        engine.kv.free([request_id])
        self._notify()


class DecodeReplica(Replica):
    """A replica that takes requests whose prompt was computed elsewhere, once its KV cache has room."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting_for_kv: deque = deque()  # (request id, tokens, event) in arrival order

    def request_kv(self, request_id: int) -> simpy.Event:
        """Count the request as routed here and queue it for KV room for prompt + 1 tokens; the event's
        value is the engine whose cache reserved them."""
        req = self.requests
        self.outstanding_requests += 1
        self.outstanding_tokens += int(req.prompt_tokens[request_id] + req.output_tokens[request_id])
        granted = self.env.event()
        self._waiting_for_kv.append((request_id, int(req.prompt_tokens[request_id]) + 1, granted))
        self._grant_kv()
        return granted

    def _grant_kv(self) -> None:
        """Reserve blocks for queued hand-offs, strictly in order (no overtaking by smaller requests).

        During a run of decodes advanced in one step, the blocks its planned steps will take are off
        limits: a grant that fits beside them is made at once (stepping would make it too). One that does
        not cuts the run short at the end of its current iteration and waits for the next batch's start
        (`_scheduled`), the replica going idle, or a request finishing; stepping one iteration at a time
        might grant it up to one iteration earlier when the cache is that close to full.
        """
        queue = self._waiting_for_kv
        while queue:
            request_id, tokens, granted = queue[0]
            engine = max(self.engines, key=lambda e: e.kv.free_blocks)
            run = self.decode_run
            if run is not None:  # a decode run, possibly cut short and ending its iteration
                kv = run.kv
                if kv.free_blocks - run.blocks_still_to_take() - kv.blocks_for(tokens) < kv.watermark_blocks:
                    self._notify()
                    return
            if not engine.kv.allocate(request_id, tokens, admission=True):
                return
            queue.popleft()
            granted.succeed(engine)

    def _scheduled(self, engine: int, batch: Batch) -> Scheduled:
        if self._waiting_for_kv:
            self._grant_kv()
        return super()._scheduled(engine, batch)

    def _idle(self):
        if self._waiting_for_kv:
            self._grant_kv()
        yield from super()._idle()

    def start(self, engine: Policy, request_id: int) -> None:
        """The request's KV has arrived: it joins the engine's running requests, already admitted.

        Not its waiting queue: a waiting request holds no KV in every policy's logic, and one holding
        blocks behind a preempted request that cannot be readmitted would never let them go.
        """
        engine.running.append(request_id)
        self.requests.replica_id[request_id] = self.replica_id
        self._notify()

    def _finish(self, engine: Policy, done: list[int], end_ns: int) -> None:
        super()._finish(engine, done, end_ns)
        if done and self._waiting_for_kv:
            self._grant_kv()


class Handoff:
    """Moves each prefilled request to a decode replica: routing, waiting for KV room, the transfer."""

    def __init__(self, env: simpy.Environment, requests: RequestState, decode_router: Router,
                 links: list[FairShareLink], link: LinkParts, bytes_per_token: int):
        self.env = env
        self.requests = requests
        self.decode_router = decode_router
        self.links = links
        self.latency_ns = round(link.latency_s * 1e9)
        self.streaming_layers = link.streaming_layers
        self.bytes_per_token = bytes_per_token
        n = len(requests)
        self.records = HandoffRecords(*(np.full(n, NOT_YET, np.int64) for _ in range(5)),
                                      kv_bytes=np.zeros(n, np.int64))
        self._prefill_done: dict[int, simpy.Event] = {}  # streaming: request -> its prefill's end

    def prefilled(self, replica: PrefillReplica, engine: Policy, request_ids: list[int], end_ns: int) -> None:
        for r in request_ids:
            self.records.prefill_replica_id[r] = replica.replica_id
            if self.streaming_layers:
                self._prefill_done.pop(r).succeed()
            else:
                self.env.process(self._move(r, replica, engine, None))

    def last_prefill_started(self, replica: PrefillReplica, engine: Policy, request_ids: list[int]) -> None:
        for r in request_ids:
            done = self.env.event()
            self._prefill_done[r] = done
            self.env.process(self._move(r, replica, engine, done))

    def _move(self, r: int, prefill: PrefillReplica, prefill_engine: Policy, prefill_done):
        env, rec = self.env, self.records
        rec.handoff_ns[r] = env.now
        decode: DecodeReplica = self.decode_router.route(r)
        rec.decode_replica_id[r] = decode.replica_id
        decode_engine = yield decode.request_kv(r)
        rec.kv_granted_ns[r] = env.now
        total_bytes = int(self.requests.prompt_tokens[r]) * self.bytes_per_token
        rec.kv_bytes[r] = total_bytes
        link = self.links[prefill.replica_id]
        if self.latency_ns:
            yield env.timeout(self.latency_ns)
        if prefill_done is None:
            yield from link.send(total_bytes)
        else:
            # Layers before the last stream while the prefill runs; the last layer's KV exists only at
            # its end. (Assumes KV is produced no slower than the link moves it.)
            last_layer_bytes = total_bytes / self.streaming_layers
            yield from link.send(total_bytes - last_layer_bytes)
            if not prefill_done.triggered:
                yield prefill_done
            yield from link.send(last_layer_bytes)
        rec.transfer_done_ns[r] = env.now
        prefill.release(prefill_engine, r)
        decode.start(decode_engine, r)


def simulate_disaggregated(requests: RequestState, prefill: PoolParts, decode: PoolParts, link: LinkParts,
                           bytes_per_token: int, *, block_size: int = 16, kv_watermark: float = 0.01,
                           seed: int = 0, fast_decode_runs: bool = True, progress: bool = False,
                           ttft_includes_transfer: bool = False) -> DisaggregatedOutput:
    """Serve `requests` on a prefill pool and a decode pool joined by one link per prefill replica.

    bytes_per_token   KV bytes moved per prompt token (config.transfer_bytes_per_token)
    Requests that can never fit a prefill engine (prompt, or prompt + output under a policy that reserves
    the full length) or a decode engine (prompt + output) are rejected with a reason, as in the colocated
    simulator.
    """
    env = simpy.Environment()
    recorder = Recorder(block_size)
    pools = {"prefill": prefill, "decode": decode}
    blocks_held = {name: np.zeros(len(requests), dtype=np.int64) for name in pools}  # a request is in both
    blocks_per_engine = {name: pool.kv_blocks // pool.predictor.num_stages for name, pool in pools.items()}

    def engines(name: str) -> list[Policy]:
        pool, blocks = pools[name], blocks_per_engine[name]
        return [pool.policy(KVCache(blocks, block_size, blocks_held[name], int(kv_watermark * blocks)), requests)
                for _ in range(pool.predictor.num_stages)]

    lanes = min(prefill.gpus_per_replica, decode.gpus_per_replica)
    links = [FairShareLink(env, link.bandwidth_bytes_per_s * lanes) for _ in range(prefill.num_replicas)]
    decode_replicas = [DecodeReplica(env, prefill.num_replicas + i, engines("decode"), decode.predictor, requests,
                                     recorder, fast_decode_runs) for i in range(decode.num_replicas)]
    handoff = Handoff(env, requests, Router(decode.router, decode_replicas, seed + 1), links, link, bytes_per_token)
    streaming = handoff.last_prefill_started if link.streaming_layers else None
    prefill_replicas = [PrefillReplica(env, i, engines("prefill"), prefill.predictor, requests, recorder,
                                       fast_decode_runs, on_prefilled=handoff.prefilled,
                                       on_last_prefill_started=streaming) for i in range(prefill.num_replicas)]

    prefill_engine = prefill_replicas[0].engines[0]
    decode_kv = decode_replicas[0].engines[0].kv
    # A prefill engine needs room for the prompt, or for the whole request if its policy reserves that
    # when admitting it (Orca): such a request could never be admitted and would wait forever.
    if prefill_engine.reserves_full_length:
        prefill_need, what = requests.prompt_tokens + requests.output_tokens, "prompt + output tokens exceed"
    else:
        prefill_need, what = requests.prompt_tokens, "prompt exceeds"
    requests.reject(~prefill_engine.kv.can_ever_hold(prefill_need),
                    f"{what} one prefill KV cache ({blocks_per_engine['prefill']} blocks of "
                    f"{block_size} tokens, less the watermark)")
    requests.reject(~decode_kv.can_ever_hold(requests.prompt_tokens + requests.output_tokens),
                    f"prompt + output tokens exceed one decode KV cache ({blocks_per_engine['decode']} "
                    f"blocks of {block_size} tokens, less the watermark)")
    accepted = np.flatnonzero(~requests.rejected)
    env.process(_arrivals(env, requests.arrived_ns[accepted].tolist(), accepted.tolist(),
                          Router(prefill.router, prefill_replicas, seed)))
    _run(env, prefill_replicas + decode_replicas, len(accepted), progress)

    unfinished = accepted[requests.completed_ns[accepted] == NOT_YET]
    if len(unfinished):
        r = int(unfinished[0])
        raise SimulationError(
            f"{len(unfinished)} requests were neither finished nor rejected when the simulation ran out of "
            f"events (first: request {r}, prefill replica {handoff.records.prefill_replica_id[r]}, "
            f"decode replica {handoff.records.decode_replica_id[r]}, "
            f"transfer {'done' if handoff.records.transfer_done_ns[r] != NOT_YET else 'not done'})")
    iterations = recorder.pop_iteration_records()
    records = recorder.pop_request_records(requests)
    if ttft_includes_transfer:
        _first_token_after_transfer(records, handoff.records)
    kv_caches = {"prefill": [e.kv for r in prefill_replicas for e in r.engines],
                 "decode": [e.kv for r in decode_replicas for e in r.engines]}
    return DisaggregatedOutput(records, iterations, handoff.records, env.now / 1e9, blocks_per_engine, pools,
                               kv_caches, links)


def _first_token_after_transfer(records: RequestRecords, handoff: HandoffRecords) -> None:
    """Move each transferred request's first token to the moment its KV reached the decode replica."""
    moved = handoff.transfer_done_ns != NOT_YET
    arrival_s = handoff.transfer_done_ns[moved] / 1e9
    records.first_token_s[moved] = arrival_s
    records.token_times_s[records.token_offsets[:-1][moved]] = arrival_s
