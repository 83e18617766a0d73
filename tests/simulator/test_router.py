"""Routers: which replica each request lands on."""
import numpy as np
import pytest
from simkit import linear, random_workload, run

from policies import POLICIES
from simulator.cluster import simulate
from simulator.config import ConfigError
from simulator.request import RequestState
from simulator.router import Router

# A (long prompt) at 0, B (short prompt) at 1 ms, C at 2 ms, while A and B are still running.
ARRIVALS, PROMPTS, OUTPUTS = [0.0, 0.001, 0.002], [500, 10, 10], [100, 100, 10]


@pytest.mark.parametrize("router, expected", [
    ("round_robin", [0, 1, 0]),
    ("least_outstanding_requests", [0, 1, 0]),  # C sees one request on each replica: tie -> replica 0
    ("least_outstanding_tokens", [0, 1, 1]),  # replica 0 holds 600 tokens, replica 1 110
])
def test_router_choice(router, expected):
    out = run("vllm", ARRIVALS, PROMPTS, OUTPUTS, num_replicas=2, router=router)
    assert out.records.replica_id.tolist() == expected


def test_least_outstanding_requests_avoids_the_busy_replica():
    # A long request holds replica 0; B finishes quickly on replica 1; C arrives when replica 1 is empty.
    out = run("vllm", [0.0, 0.0, 1.0], [10, 10, 10], [200, 1, 5], num_replicas=2,
              router="least_outstanding_requests")
    assert out.records.replica_id.tolist() == [0, 1, 1]
    rr = run("vllm", [0.0, 0.0, 1.0], [10, 10, 10], [200, 1, 5], num_replicas=2, router="round_robin")
    assert rr.records.replica_id.tolist() == [0, 1, 0]


def test_random_router_is_seeded_and_spreads_load():
    arrivals, prompts, outputs = random_workload(400, seed=2)
    a = run("vllm", arrivals, prompts, outputs, num_replicas=4, router="random", seed=5)
    b = run("vllm", arrivals, prompts, outputs, num_replicas=4, router="random", seed=5)
    c = run("vllm", arrivals, prompts, outputs, num_replicas=4, router="random", seed=6)
    assert np.array_equal(a.records.replica_id, b.records.replica_id)
    assert not np.array_equal(a.records.replica_id, c.records.replica_id)
    assert np.all(np.bincount(a.records.replica_id, minlength=4) > 60)


def test_iterations_name_their_replica():
    arrivals, prompts, outputs = random_workload(100, seed=4)
    out = run("sarathi", arrivals, prompts, outputs, num_replicas=3)
    r, it = out.records, out.iterations
    assert sorted(set(it.replica_id.tolist())) == [0, 1, 2]
    for replica in range(3):
        mine = r.replica_id == replica
        # The replica's iterations computed exactly its requests' prompt tokens (no preemption here).
        assert it.num_prefill_tokens[it.replica_id == replica].sum() == r.prompt_tokens[mine].sum()


# --- prefix_aware, with stand-ins for replicas whose caches report fixed prefix hits -------------------


class FakeKV:
    """A KV cache that holds `hits[request_id]` leading blocks of each request (0 for others)."""

    def __init__(self, hits: dict, block_size: int = 16):
        self.hits = hits
        self.block_size = block_size
        self.asked: list[int] = []

    def prefix_hit_blocks(self, request_id: int) -> int:
        self.asked.append(request_id)
        return self.hits.get(request_id, 0)


class FakeEngine:
    def __init__(self, kv):
        self.kv = kv


class FakeReplica:
    def __init__(self, outstanding_tokens: int, *engine_hits: dict, block_size: int = 16):
        self.outstanding_tokens = outstanding_tokens
        self.outstanding_requests = 0
        self.engines = [FakeEngine(FakeKV(hits, block_size)) for hits in engine_hits or ({},)]

    def catch_up(self):  # a Replica brings a decode run's blocks to the present here; nothing runs here
        pass


def prefix_router(replicas, load_weight=1.0):
    return Router("prefix_aware", replicas, load_weight=load_weight)


def test_prefix_aware_trades_cached_tokens_against_queued_ones():
    # Replica 0: nothing cached, 100 tokens queued: score 0 - 100 = -100.
    # Replica 1: 10 blocks x 16 = 160 tokens of request 7 cached, 200 queued: 160 - 200 = -40 -> chosen.
    replicas = [FakeReplica(100), FakeReplica(200, {7: 10})]
    router = prefix_router(replicas)
    assert router.route(7) is replicas[1]
    assert [router.prefix_score(r, 7) for r in replicas] == [-100, -40]
    assert replicas[1].engines[0].kv.asked == [7, 7]  # asked about this request, once per route/score
    # Queued tokens count twice: 0 - 200 = -200 beats 160 - 400 = -240.
    assert prefix_router(replicas, load_weight=2.0).route(7) is replicas[0]
    # Another request has no hit anywhere: the least loaded replica.
    assert router.route(8) is replicas[0]


def test_prefix_aware_without_hits_is_least_outstanding_tokens_and_ties_go_to_the_lowest_id():
    replicas = [FakeReplica(300), FakeReplica(100), FakeReplica(100)]
    assert prefix_router(replicas).route(0) is replicas[1]
    # Equal scores: 32 - 132 = 0 - 100 = -100 -> replica 0.
    replicas = [FakeReplica(132, {0: 2}), FakeReplica(100)]
    assert prefix_router(replicas).route(0) is replicas[0]


def test_prefix_aware_counts_blocks_in_tokens_and_takes_a_replicas_best_engine():
    # Blocks of 4 tokens: 5 blocks = 20 tokens. The pipeline replica's engines hold 2 and 6 blocks of 16: 96.
    replicas = [FakeReplica(0, {3: 5}, block_size=4), FakeReplica(50, {3: 2}, {3: 6})]
    router = prefix_router(replicas)
    assert [router.prefix_score(r, 3) for r in replicas] == [20, 46]
    assert router.route(3) is replicas[1]
    # load_weight 0: cache hits alone decide, however loaded.
    replicas = [FakeReplica(0), FakeReplica(10**6, {3: 1})]
    assert prefix_router(replicas, load_weight=0.0).route(3) is replicas[1]


def test_prefix_aware_needs_caches_that_report_hits():
    class PlainKV:
        block_size = 16

    replica = FakeReplica(0)
    replica.engines = [FakeEngine(PlainKV())]
    with pytest.raises(ConfigError, match="cluster.router=prefix_aware needs KV caches"):
        Router("prefix_aware", [replica, FakeReplica(0)])
    with pytest.raises(ConfigError, match="cluster.router_load_weight=-1"):
        Router("prefix_aware", [FakeReplica(0)], load_weight=-1)


def test_least_outstanding_tokens_with_stand_ins():
    replicas = [FakeReplica(50), FakeReplica(20), FakeReplica(20)]
    assert Router("least_outstanding_tokens", replicas).route(0) is replicas[1]


def test_prefix_aware_is_wired_through_the_simulation():
    def served_by(hits_of_replica: list[dict], load_weight=1.0) -> list[int]:
        """Replica of each request when replica i's cache holds hits_of_replica[i][request] leading blocks."""
        made = []

        def new_policy(kv, requests):
            hits = hits_of_replica[len(made)]  # engines are made replica by replica (pp = 1: one each)
            kv.prefix_hit_blocks = lambda request_id: hits.get(request_id, 0)
            made.append(kv)
            return POLICIES["vllm"](kv, requests)

        requests = RequestState.create(np.asarray(ARRIVALS), PROMPTS, OUTPUTS, 100_000)
        out = simulate(requests, new_policy, linear(), 10_000, num_replicas=2, router="prefix_aware",
                       router_load_weight=load_weight)
        return out.records.replica_id.tolist()

    # Caches that hold nothing: prefix_aware chooses as least_outstanding_tokens does (test_router_choice).
    assert served_by([{}, {}]) == [0, 1, 1]
    # Replica 0 holds C's first 40 blocks of 16 tokens: 640 - 600 queued beats 0 - 110.
    assert served_by([{2: 40}, {}]) == [0, 1, 0]
    # Counting queued tokens twice: 640 - 1200 loses to 0 - 220.
    assert served_by([{2: 40}, {}], load_weight=2.0) == [0, 1, 1]
