"""A cluster of replicas behind a router, fed by an arrival process: the simulation itself.

`simulate` takes requests and already-built parts (a policy factory, a predictor, the KV size) so tests
can drive it with hand-computable pieces; `simulator.run.run_simulation` builds those parts from a
config. Data flows one way: arrivals -> router -> replica (policy, predictor) -> recorder.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy
from simpy.core import URGENT, EmptySchedule
from simpy.events import Event
from tqdm import tqdm

from policies.base import Policy
from simulator.kv_cache import KVCache
from simulator.metrics import IterationRecords, RequestRecords, prefix_cache_counts
from simulator.predictor import IterationTimePredictor
from simulator.recorder import Recorder
from simulator.replica import Replica
from simulator.request import NOT_YET, RequestState
from simulator.router import Router

PolicyFactory = Callable[[KVCache, RequestState], Policy]


class SimulationError(RuntimeError):
    """The simulation ended in a state that should be impossible (e.g. a policy never served a request)."""


@dataclass
class SimulationOutput:
    records: RequestRecords
    iterations: IterationRecords
    simulated_s: float
    kv_blocks_per_engine: int
    # Prefix caches' counts over all engines: lookup_blocks, hit_blocks, evictions (all 0 without one).
    prefix_cache: dict | None = None


class _ArrivalTimeout(Event):
    """A timeout processed before ordinary events at the same instant.

    A request arriving exactly when an iteration ends is then always visible to the scheduling decision
    made at that instant, whatever order the two events were created in; this is what makes stepping
    one iteration at a time and advancing runs of decodes give identical results.
    """

    def __init__(self, env: simpy.Environment, delay: int):
        super().__init__(env)
        self._ok, self._value = True, None
        env.schedule(self, URGENT, delay)


def _arrivals(env: simpy.Environment, arrived_ns: list[int], request_ids: list[int], router: Router):
    for t, request_id in zip(arrived_ns, request_ids):
        if t > env.now:
            yield _ArrivalTimeout(env, t - env.now)
        router.route(request_id).add_request(request_id)


def simulate(requests: RequestState, policy: PolicyFactory, predictor: IterationTimePredictor,
             kv_blocks: int, block_size: int = 16, num_replicas: int = 1, router: str = "round_robin",
             kv_watermark: float = 0.01, seed: int = 0, fast_decode_runs: bool = True,
             progress: bool = False, router_load_weight: float = 1.0) -> SimulationOutput:
    """Serve `requests` (already screened for context length) on `num_replicas` identical replicas.

    policy       builds one scheduler from (KVCache, RequestState); called once per engine
    predictor    iteration times; its num_stages is the pipeline depth of every replica
    kv_blocks    KV blocks per replica (each GPU's capacity); a pp-stage replica gives each of its pp
                 engines kv_blocks // pp
    router_load_weight  router=prefix_aware's weight of queued tokens against cached ones
    Requests whose full length can never fit one engine's cache are rejected with a reason.
    """
    env = simpy.Environment()
    recorder = Recorder(block_size)
    num_stages = predictor.num_stages
    blocks_per_engine = kv_blocks // num_stages
    blocks_held = np.zeros(len(requests), dtype=np.int64)
    watermark_blocks = int(kv_watermark * blocks_per_engine)

    def new_engine() -> Policy:
        return policy(KVCache(blocks_per_engine, block_size, blocks_held, watermark_blocks), requests)

    replicas = [Replica(env, i, [new_engine() for _ in range(num_stages)], predictor, requests, recorder,
                        fast_decode_runs) for i in range(num_replicas)]
    probe = replicas[0].engines[0].kv
    too_big = ~probe.can_ever_hold(requests.prompt_tokens + requests.output_tokens)
    requests.reject(too_big, f"prompt + output tokens exceed one KV cache ({blocks_per_engine} blocks "
                             f"of {block_size} tokens, less the watermark)")
    accepted = np.flatnonzero(~requests.rejected)
    env.process(_arrivals(env, requests.arrived_ns[accepted].tolist(), accepted.tolist(),
                          Router(router, replicas, seed, router_load_weight)))
    _run(env, replicas, len(accepted), progress)

    unfinished = accepted[requests.completed_ns[accepted] == NOT_YET]
    if len(unfinished):
        raise SimulationError(
            f"{len(unfinished)} requests were neither finished nor rejected when the simulation ran out of "
            f"events (first: request {unfinished[0]}); the policy "
            f"'{type(replicas[0].engines[0]).__name__}' never scheduled them"
        )
    # The recorder's buffers are emptied as the records are built (replicas and SimPy processes form
    # reference cycles, so they would otherwise live until the next garbage collection).
    iterations = recorder.pop_iteration_records()
    records = recorder.pop_request_records(requests)
    prefix_cache = prefix_cache_counts(engine.kv for replica in replicas for engine in replica.engines)
    return SimulationOutput(records, iterations, env.now / 1e9, blocks_per_engine, prefix_cache)


def _run(env: simpy.Environment, replicas: list[Replica], num_requests: int, progress: bool) -> None:
    """Run until no event is left, with a progress bar over finished requests when asked."""
    if not progress:
        env.run()
        return
    with tqdm(total=num_requests, unit="req", desc="simulating", dynamic_ncols=True) as bar:
        events = 0
        try:
            while True:
                env.step()
                events += 1
                if events % 4096 == 0:
                    bar.update(sum(r.completed for r in replicas) - bar.n)
                    bar.set_postfix_str(f"simulated {env.now / 1e9:,.0f} s", refresh=False)
        except EmptySchedule:
            bar.update(sum(r.completed for r in replicas) - bar.n)
