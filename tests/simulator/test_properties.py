"""The simulator's invariants as properties over generated scenarios (tests/simulator/scenarios.py): every
policy with valid parameters drawn from its `parameters` table, 1-4 replicas behind every router, pp 1, 2
or 4, KV caches tight enough to reject and preempt, the fast path on and off. The disaggregated pools'
property is in tests/test_disagg.py. bench/fuzz.py runs the same checks on many more scenarios."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scenarios import (
    INVARIANTS,
    HypothesisChoices,
    RngChoices,
    check_all,
    draw_params,
    draw_scenario,
    fast_path_matches_stepping,
    simulate_scenario,
)

from policies import POLICIES


@settings(max_examples=500, deadline=None, derandomize=True)
@given(data=st.data())
def test_every_invariant_holds_on_any_colocated_scenario(data):
    """Tokens once each, KV within capacity, time forward, each request served or rejected with a reason,
    every block back at the end."""
    check_all(simulate_scenario(draw_scenario(HypothesisChoices(data), disaggregated=False)))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data())
def test_fast_path_matches_stepping_on_any_scenario(data):
    fast_path_matches_stepping(draw_scenario(HypothesisChoices(data)))


def test_the_checks_catch_what_they_guard():
    # One scenario (sglang with its radix cache, 2+ replicas of pp=2, 30 requests served, 20 preemptions)
    # broken after the fact: each invariant must notice its own violation.
    def outcome():
        o = simulate_scenario(draw_scenario(RngChoices(71), disaggregated=False))
        check_all(o)
        assert (~o.out.records.rejected).sum() == 30 and o.out.records.preemptions.sum() == 20
        return o

    broken = {
        "tokens_once": lambda o: o.outputs.__setitem__(np.flatnonzero(~o.out.records.rejected)[0], 10**6),
        "kv_within_capacity": lambda o: o.out.iterations.kv_blocks_used.__setitem__(0, 10**6),
        "time_moves_forward": lambda o: o.out.iterations.duration_s.__setitem__(0, 0.0),
        "blocks_returned": lambda o: setattr(o.engines[0].kv, "free_blocks", o.engines[0].kv.free_blocks - 1),
        "completes_or_rejected": lambda o: o.out.records.completed_s.__setitem__(
            np.flatnonzero(~o.out.records.rejected)[0], np.nan),
    }
    assert set(broken) == set(INVARIANTS)
    for name, breakage in broken.items():
        o = outcome()
        breakage(o)
        try:
            INVARIANTS[name](o)
        except AssertionError:
            continue
        raise AssertionError(f"{name} missed its violation")


def test_scenarios_cover_every_policy_and_parameter():
    seen = {name: set() for name in POLICIES}
    for seed in range(200):
        for name in POLICIES:
            seen[name] |= set(draw_params(RngChoices(seed), name, 64))
    assert seen == {name: {p.name for p in cls.parameters} for name, cls in POLICIES.items()}
