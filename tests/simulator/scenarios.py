"""Random simulation scenarios and the invariants every one must keep, shared by the property tests
(tests/simulator/test_properties.py, which draw scenarios with hypothesis) and bench/fuzz.py (which draws
them from numpy seeds, so a failure is one seed to replay).

A scenario is drawn through a `Choices` object, so the same code serves both: `draw_scenario(choices)`.
Policy parameters come from each policy's `parameters` table, so a new policy is covered without edits here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies import POLICIES
from simulator.cluster import SimulationError, simulate
from simulator.config import ROUTERS
from simulator.content import TokenContent
from simulator.disagg.cluster import LinkParts, PoolParts, simulate_disaggregated
from simulator.linear_predictor import LinearPredictor
from simulator.request import RequestState

BYTES_PER_TOKEN = 1000  # KV moved per prompt token in disaggregated scenarios (1 us a token at 1 GB/s)
DECODE_POLICIES = sorted(n for n, cls in POLICIES.items() if not cls.reserves_full_length)


class RngChoices:
    """Choices from a numpy generator (bench/fuzz.py): a scenario is reproduced from its seed."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def integer(self, low: int, high: int) -> int:  # both ends included
        return int(self.rng.integers(low, high + 1))

    def one_of(self, values):
        return values[int(self.rng.integers(len(values)))]


class HypothesisChoices:
    """Choices drawn by hypothesis (`st.data()`), so a failing scenario shrinks to a small one."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(self.st.integers(low, high))

    def one_of(self, values):
        return self.data.draw(self.st.sampled_from(list(values)))


@dataclass
class Pool:
    """One pool of identical replicas (the whole cluster when colocated)."""

    policy: str
    params: dict
    num_replicas: int
    pp: int
    kv_blocks: int  # per replica; each of its pp engines gets kv_blocks // pp


@dataclass
class Scenario:
    pools: dict  # "colocated" -> Pool, or "prefill" and "decode" -> Pool
    router: str
    fast_decode_runs: bool
    block_size: int
    kv_watermark: float
    max_model_len: int
    workload_seed: int
    num_requests: int
    rate_qps: float
    max_prompt: int
    max_output: int
    streaming_layers: int = 0
    seed: int | None = field(default=None)  # the fuzz seed that drew it, if any
    content_unit_tokens: int = 0  # > 0: requests share prefixes (token content in units this long)

    @property
    def disaggregated(self) -> bool:
        return "colocated" not in self.pools

    def workload(self):
        """(arrivals_s, prompts, outputs): Poisson arrivals, uniform lengths (some past max_model_len)."""
        rng = np.random.default_rng(self.workload_seed)
        arrivals = np.cumsum(rng.exponential(1 / self.rate_qps, self.num_requests))
        return (arrivals, rng.integers(1, self.max_prompt + 1, self.num_requests),
                rng.integers(1, self.max_output + 1, self.num_requests))

    def content(self, prompts: np.ndarray, outputs: np.ndarray) -> TokenContent | None:
        """Token content where requests start with one of three shared texts (or a part of one), then
        text of their own; None when content_unit_tokens is 0."""
        unit = self.content_unit_tokens
        if not unit:
            return None
        rng = np.random.default_rng(self.workload_seed + 1)
        units_needed = -(-(prompts + outputs) // unit)
        longest = int(units_needed.max())
        shared = [np.arange(longest) + 1_000_000 * (k + 1) for k in range(3)]
        keys, own = [], 0
        for n in units_needed.tolist():
            common = rng.integers(0, n + 1)
            mine = np.arange(own, own + n - common)
            own += n - common
            keys.append(np.concatenate([shared[rng.integers(0, 3)][:common], mine]).astype(np.int64))
        return TokenContent(unit, keys)


def draw_params(choices, policy: str, max_model_len: int) -> dict:
    """Valid values for some of the policy's declared parameters (the rest keep their defaults)."""
    params = {}
    for p in POLICIES[policy].parameters:
        if choices.integer(0, 3) == 0:
            continue
        if p.type is bool:
            params[p.name] = bool(choices.integer(0, 1))
            continue
        if p.type is str:
            params[p.name] = choices.one_of(p.choices)
            continue
        low = max(p.minimum, max_model_len) if p.at_least_max_model_len else p.minimum
        value = choices.integer(low, low + (8 if choices.integer(0, 1) else 2 * max_model_len))
        params[p.name] = p.type(value)
    return params


# prefix_aware asks each KV cache how much of a request's prefix it holds; drawn once the caches answer.


def draw_pool(choices, policy: str, max_model_len: int, block_size: int, max_replicas: int) -> Pool:
    pp = choices.one_of((1, 2, 4))
    # Tight: from a quarter of one context per engine (some requests rejected) to three (preemption).
    context_blocks = -(-max_model_len // block_size)
    blocks_per_engine = max(1, int(context_blocks * choices.one_of((0.25, 1, 1.5, 3)))) + choices.integer(0, 2)
    return Pool(policy, draw_params(choices, policy, max_model_len), choices.integer(1, max_replicas), pp,
                blocks_per_engine * pp)


def draw_scenario(choices, disaggregated: bool | None = None, seed: int | None = None,
                  policies: dict | None = None) -> Scenario:
    """One scenario; colocated or disaggregated at random unless `disaggregated` says which, each pool's
    policy at random unless `policies` (pool name -> policy name) names it."""
    policies = policies or {}
    if disaggregated is None:
        disaggregated = choices.integer(0, 2) == 0
    max_model_len = choices.one_of((32, 64, 128, 256, 512))
    block_size = choices.one_of((1, 4, 16))
    if disaggregated:
        choose = {"prefill": sorted(POLICIES), "decode": DECODE_POLICIES}
        replicas = 2
    else:
        choose, replicas = {"colocated": sorted(POLICIES)}, 4
    pools = {name: draw_pool(choices, policies.get(name) or choices.one_of(names), max_model_len, block_size,
                             replicas) for name, names in choose.items()}
    return Scenario(
        pools=pools, router=choices.one_of(ROUTERS), fast_decode_runs=bool(choices.integer(0, 1)),
        block_size=block_size, kv_watermark=choices.one_of((0.0, 0.01, 0.1)), max_model_len=max_model_len,
        workload_seed=choices.integer(0, 2**31), num_requests=choices.one_of((1, 8, 20, 40)),
        rate_qps=choices.one_of((20.0, 200.0, 2000.0)), max_prompt=max_model_len // choices.one_of((1, 2, 4)),
        max_output=max_model_len // choices.one_of((1, 2, 4, 8)), streaming_layers=choices.one_of((0, 0, 4)), seed=seed,
        content_unit_tokens=choices.one_of((0, 4, 16)))


@dataclass
class Outcome:
    scenario: Scenario
    prompts: np.ndarray
    outputs: np.ndarray
    out: object | None  # SimulationOutput or DisaggregatedOutput; None when the simulation raised
    caches: list  # every engine's KVCache, as built
    error: Exception | None = None
    engines: list = field(default_factory=list)  # every engine (policy); engine.kv is the cache it uses


def simulate_scenario(s: Scenario, fast_decode_runs: bool | None = None) -> Outcome:
    """Run the scenario with the linear predictor (10 ms + 1 ms a prefill token + 2 ms a decode per stage)."""
    arrivals, prompts, outputs = s.workload()
    requests = RequestState.create(arrivals, prompts, outputs, s.max_model_len, s.content(prompts, outputs))
    fast = s.fast_decode_runs if fast_decode_runs is None else fast_decode_runs
    caches, engines = [], []

    def factory(pool: Pool):
        cls = POLICIES[pool.policy]

        def new_engine(kv, reqs):
            caches.append(kv)
            engines.append(cls(kv, reqs, **pool.params))
            return engines[-1]
        return new_engine

    def predictor(pool: Pool):
        return LinearPredictor(0.010, 0.001, 0.002, 1e-5, pool.pp)

    try:
        if s.disaggregated:
            parts = {name: PoolParts(p.num_replicas, factory(p), predictor(p), p.kv_blocks)
                     for name, p in s.pools.items()}
            out = simulate_disaggregated(requests, parts["prefill"], parts["decode"],
                                         LinkParts(1e9, 0.0005, s.streaming_layers), BYTES_PER_TOKEN,
                                         block_size=s.block_size, kv_watermark=s.kv_watermark,
                                         fast_decode_runs=fast)
        else:
            p = s.pools["colocated"]
            out = simulate(requests, factory(p), predictor(p), p.kv_blocks, block_size=s.block_size,
                           num_replicas=p.num_replicas, router=s.router, kv_watermark=s.kv_watermark,
                           fast_decode_runs=fast)
    except SimulationError as error:
        return Outcome(s, prompts, outputs, None, caches, error, engines)
    return Outcome(s, prompts, outputs, out, caches, error=None, engines=engines)


# --- the invariants: each takes an Outcome and raises AssertionError with what it found ----------------


def completes_or_rejected(o: Outcome) -> None:
    """Every request is served to its last token or rejected with a reason; none is left waiting."""
    assert o.error is None, f"simulation error: {o.error}"
    r = o.out.records
    served = ~r.rejected
    assert np.isfinite(r.completed_s[served]).all(), "a served request never completed"
    assert np.isnan(r.completed_s[r.rejected]).all(), "a rejected request completed"
    assert (r.reject_reason[r.rejected] != "").all(), "a request was rejected without a reason"
    assert (r.reject_reason[served] == "").all(), "a served request carries a reject reason"
    too_long = o.prompts + o.outputs > o.scenario.max_model_len
    assert r.rejected[too_long].all(), "a request past max_model_len was served"


def tokens_once(o: Outcome) -> None:
    """Each served request emits exactly its output tokens, a rejected one none."""
    assert o.out is not None, "no output"
    r = o.out.records
    produced = np.diff(r.token_offsets)
    assert np.array_equal(produced[~r.rejected], o.outputs[~r.rejected]), "token count differs from output_tokens"
    assert (produced[r.rejected] == 0).all(), "a rejected request emitted tokens"


def kv_within_capacity(o: Outcome) -> None:
    """No iteration uses more KV blocks than its replica has; no engine ever held more than its cache."""
    assert o.out is not None, "no output"
    it = o.out.iterations
    assert (it.kv_blocks_used >= 0).all(), "negative KV blocks in use"
    first = 0
    for p in o.scenario.pools.values():
        mine = (it.replica_id >= first) & (it.replica_id < first + p.num_replicas)
        first += p.num_replicas  # a disaggregated run numbers the decode replicas after the prefill ones
        capacity = (p.kv_blocks // p.pp) * p.pp
        assert (it.kv_blocks_used[mine] <= capacity).all(), \
            f"{it.kv_blocks_used[mine].max()} KV blocks in use on a replica of {capacity}"
    for cache in o.caches:
        assert 0 <= cache.free_blocks <= cache.num_blocks, "a KV cache's free count left [0, capacity]"


def time_moves_forward(o: Outcome) -> None:
    """Each request's tokens come after its arrival, in increasing time; the last one completes it.
    No engine (replica, stage) runs two iterations at once; every iteration takes time."""
    assert o.out is not None, "no output"
    r, it = o.out.records, o.out.iterations
    for i in np.flatnonzero(~r.rejected):
        times = r.token_times_s[r.token_offsets[i]: r.token_offsets[i + 1]]
        assert (np.diff(times) > 0).all(), f"request {i}'s tokens are not in increasing time"
        assert r.arrived_s[i] <= r.first_scheduled_s[i] <= r.first_token_s[i] == times[0], \
            f"request {i}: arrival, first schedule and first token out of order"
        assert times[-1] == r.completed_s[i], f"request {i} completed at another time than its last token"
    assert (it.duration_s > 0).all(), "an iteration took no time"
    for replica, stage in set(zip(it.replica_id.tolist(), it.stage.tolist())):
        mine = (it.replica_id == replica) & (it.stage == stage)
        start, end = it.start_s[mine], it.start_s[mine] + it.duration_s[mine]
        order = np.argsort(start, kind="stable")
        assert (start[order][1:] >= end[order][:-1] - 1e-9).all(), \
            f"replica {replica} stage {stage} ran two iterations at once"


def blocks_returned(o: Outcome) -> None:
    """At the end every KV block is back in its cache and no request holds one; a prefix cache's own
    bookkeeping (reference counts, free list, cache index) agrees."""
    assert o.out is not None, "no output"
    assert o.caches, "no KV cache was built"
    for engine in o.engines:
        cache = engine.kv  # a policy may have swapped in a prefix cache
        assert cache.free_blocks == cache.num_blocks, f"{cache.num_blocks - cache.free_blocks} blocks never freed"
        assert (cache.blocks_held == 0).all(), "a request still holds blocks"
        if hasattr(cache, "check_invariants"):
            cache.check_invariants()


INVARIANTS = {f.__name__: f for f in
              (completes_or_rejected, tokens_once, kv_within_capacity, time_moves_forward, blocks_returned)}


def handoff_waited_for_kv(o: Outcome) -> bool:
    """Whether some disaggregated hand-off waited for room in a decode replica's KV cache."""
    handoff = o.out.handoff
    moved = handoff.kv_granted_ns >= 0
    return bool((handoff.kv_granted_ns[moved] > handoff.handoff_ns[moved]).any())


def fast_path_matches_stepping(s: Scenario) -> bool:
    """Advancing runs of decodes in one step gives every request the token times, preemptions and replica
    that stepping one iteration at a time gives. Not required (False returned, nothing compared) where a
    disaggregated hand-off waited for decode KV: there stepping may grant it up to one iteration earlier,
    as DecodeReplica._grant_kv documents."""
    fast, slow = simulate_scenario(s, True), simulate_scenario(s, False)
    assert (fast.error is None) == (slow.error is None), "only one of fast and stepping raised"
    if fast.out is None or (s.disaggregated and (handoff_waited_for_kv(fast) or handoff_waited_for_kv(slow))):
        return False
    for name in ("token_offsets", "token_times_s", "first_scheduled_s", "completed_s", "preemptions",
                 "replica_id", "rejected"):
        assert np.array_equal(getattr(fast.out.records, name), getattr(slow.out.records, name), equal_nan=True), \
            f"{name} differs between the fast path and stepping\n{s}"
    return True


def check_all(o: Outcome) -> None:
    """Every invariant, the first violation raised with the invariant's name and the scenario."""
    for name, check in INVARIANTS.items():
        try:
            check(o)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}\n{o.scenario}") from None
