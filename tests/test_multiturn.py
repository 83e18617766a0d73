"""Multi-turn sessions: hand-computed turns, prefix sharing between turns, determinism, checks of every field."""
import itertools

import numpy as np
import pytest

from simulator.config import ConfigError
from simulator.content import block_hashes
from simulator.multiturn import generate_sessions, turns_per_session
from simulator.workload import WorkloadConfig, describe_source, load_workload, load_workload_config

ALWAYS_CAPPED = 1e12  # a geometric mean so large that every session has turns_max turns


def sessions(num_requests=6, **overrides):
    """Sessions every 100 s with 3 turns each; every turn adds a 30-token user message and a 10-token answer
    (total 40, split 3:1); a 32-token system prompt; the next turn comes 0.5 s per answer token later."""
    params = {"turns_mean": ALWAYS_CAPPED, "turns_max": 3, "min_tokens": 40, "max_tokens": 40,
              "prefill_decode_ratio": 3.0, "think_time_s": 0.0, "expected_tpot_s": 0.5, "system_prompt_tokens": 32,
              "num_system_prompts": 1, "rng": np.random.default_rng(0)}
    return generate_sessions(num_requests, lambda n: np.arange(n) * 100.0, **(params | overrides))


def test_hand_computed_sessions():
    s = sessions()
    assert s.session_id.tolist() == [0, 0, 0, 1, 1, 1] and s.turn.tolist() == [0, 1, 2, 0, 1, 2]
    # Turn k's prompt: system 32 + k x (30 + 10) earlier tokens + 30 new ones.
    assert s.prompt_tokens.tolist() == [62, 102, 142] * 2
    assert s.output_tokens.tolist() == [10] * 6
    # Turn k+1 comes 10 answer tokens x 0.5 s = 5 s after turn k.
    assert s.arrived_s.tolist() == [0.0, 5.0, 10.0, 100.0, 105.0, 110.0]
    # Keys cover prompt + answer (72, 112, 152 tokens: 5, 7, 10 units of 16). The system prompt's two units
    # have its keys (-1, -2); session 0 numbers its own units 2..9, session 1 (starting at key 10) 12..19.
    assert s.content.unit_tokens == 16
    assert [k.tolist() for k in s.content.keys] == [
        [-1, -2, 2, 3, 4], [-1, -2, 2, 3, 4, 5, 6], [-1, -2, 2, 3, 4, 5, 6, 7, 8, 9],
        [-1, -2, 12, 13, 14], [-1, -2, 12, 13, 14, 15, 16], [-1, -2, 12, 13, 14, 15, 16, 17, 18, 19],
    ]


def test_next_turn_starts_with_the_previous_turns_prompt_and_answer():
    s = sessions(num_requests=400, turns_mean=5.0, turns_max=12, min_tokens=20, max_tokens=300,
                 think_time_s=3.0, system_prompt_tokens=40, num_system_prompts=3, rng=np.random.default_rng(7))
    keys = s.content.keys
    by_session: dict[int, list[int]] = {}
    for i in np.lexsort((s.turn, s.session_id)).tolist():
        by_session.setdefault(int(s.session_id[i]), []).append(i)
    for ids in by_session.values():
        for a, b in itertools.pairwise(ids):
            seen = s.prompt_tokens[a] + s.output_tokens[a]
            assert s.prompt_tokens[b] > seen and s.arrived_s[b] > s.arrived_s[a]
            assert np.array_equal(keys[b][:len(keys[a])], keys[a])
            # So a cache's block hashes of everything turn a saw are turn b's first hashes.
            assert np.array_equal(block_hashes(keys[a], 16, 16, seen), block_hashes(keys[b], 16, 16, seen))
    # Sessions with the same system prompt share its 40 // 16 = 2 full units and nothing after them.
    firsts = [keys[ids[0]] for ids in by_session.values()]
    systems = {tuple(k[:2].tolist()) for k in firsts}
    assert systems <= {(-1, -2), (-3, -4), (-5, -6)} and len(systems) == 3
    assert all(k[2] >= 0 for k in firsts)  # the unit with the prompt's last 8 tokens is the session's own
    session_keys = [set(k[2:].tolist()) for k in firsts]
    assert sum(map(len, session_keys)) == len(set().union(*session_keys))
    assert np.all(np.diff(s.arrived_s) >= 0)


def test_turns_per_session_sum_to_the_requests_and_average_turns_mean():
    turns = turns_per_session(10, ALWAYS_CAPPED, 4, np.random.default_rng(0))
    assert turns.tolist() == [4, 4, 2]  # the last session cut to make 10
    turns = turns_per_session(200_000, 4.0, 1000, np.random.default_rng(1))
    assert turns.sum() == 200_000 and turns.min() >= 1
    assert turns[:-1].mean() == pytest.approx(4.0, rel=0.02)
    assert turns_per_session(5, 1.0, 10, np.random.default_rng(2)).tolist() == [1] * 5


def chat(**overrides):
    return load_workload_config("multiturn_chat", **overrides)


def test_workload_is_seeded_and_sorted():
    a, b, c = (load_workload(chat(num_requests=500), seed) for seed in (1, 1, 2))
    assert np.array_equal(a.arrived_s, b.arrived_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert all(np.array_equal(x, y) for x, y in zip(a.content.keys, b.content.keys))
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)
    assert a.arrived_s[0] == 0 and np.all(np.diff(a.arrived_s) >= 0)
    units = -(-(a.prompt_tokens + a.output_tokens) // 16)
    assert [len(k) for k in a.content.keys] == units.tolist()
    assert a.name == "multiturn_chat"
    assert describe_source(chat()) == "multi-turn sessions (4 turns on average), poisson arrivals at 0.5 sessions/s"


def test_clipping_cuts_the_keys_to_what_the_clipped_request_still_holds():
    full = load_workload(chat(num_requests=300), seed=0)
    clipped = load_workload(chat(num_requests=300, max_prompt_tokens=1000, max_output_tokens=50), seed=0)
    for p, o, keys, cp, co, ckeys in zip(full.prompt_tokens, full.output_tokens, full.content.keys,
                                        clipped.prompt_tokens, clipped.output_tokens, clipped.content.keys):
        assert cp == min(p, 1000) and co == min(o, 50)
        # A cut prompt keeps the keys of its first 1000 tokens; an uncut one those of prompt + clipped answer.
        kept_tokens = cp if p > 1000 else p + co
        assert np.array_equal(ckeys, keys[:-(-kept_tokens // 16)])


@pytest.mark.parametrize("overrides, field", [
    ({"arrival": "trace"}, "workload.arrival='trace'"),
    ({"turns_mean": 0.5}, "workload.turns_mean=0.5"),
    ({"turns_max": 0}, "workload.turns_max=0"),
    ({"think_time_s": -1.0}, "workload.think_time_s=-1.0"),
    ({"think_time_s": float("nan")}, "workload.think_time_s=nan"),
    ({"expected_tpot_s": -0.1}, "workload.expected_tpot_s=-0.1"),
    ({"system_prompt_tokens": -1}, "workload.system_prompt_tokens=-1"),
    ({"num_system_prompts": 0}, "workload.num_system_prompts=0"),
    ({"turns_max": 10**6, "max_tokens": 10**6}, "workload.turns_max=1000000"),
    ({"num_requests": None}, "workload.num_requests must be set"),
    ({"min_tokens": 1}, "workload.min_tokens=1"),
])
def test_each_bad_parameter_names_its_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_workload(chat(**overrides), seed=0)
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


def test_defaults_of_other_workloads_are_unchanged():
    # The multi-turn fields are ignored unless lengths=multiturn, and content stays None for CSV traces.
    w = load_workload(WorkloadConfig(num_requests=10, turns_mean=0.5), seed=0)
    assert len(w) == 10 and w.content is None
