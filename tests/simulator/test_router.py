"""Routers: which replica each request lands on."""
import numpy as np
import pytest
from simkit import random_workload, run

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
