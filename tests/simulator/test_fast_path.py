"""Advancing runs of decode iterations in one step gives exactly what stepping one at a time gives."""
import numpy as np
import pytest
from simkit import linear, random_workload, run

from simulator.replica import SHORT_RUN_STEPS, second_to_duration_ns, step_ends_ns

POLICIES = ["vllm", ("sarathi", {"chunk_size": 256}), ("orca", {"max_batch_size": 8}),
            ("faster_transformer", {"max_batch_size": 8}), "shortest_prompt_first",
            ("vllm_v1", {"max_num_batched_tokens": 256}),
            ("vllm_v1", {"max_num_batched_tokens": 256, "async_scheduling": True}),
            ("sglang", {"chunked_prefill_size": 256})]


def both_paths(policy, kv_blocks, **kwargs):
    arrivals, prompts, outputs = random_workload(300, seed=7, rate_qps=30)
    fast = run(policy, arrivals, prompts, outputs, predictor=linear(kv_ms=0.01), kv_blocks=kv_blocks,
               fast_decode_runs=True, **kwargs)
    slow = run(policy, arrivals, prompts, outputs, predictor=linear(kv_ms=0.01), kv_blocks=kv_blocks,
               fast_decode_runs=False, **kwargs)
    return fast, slow


@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("kv_blocks", [10_000, 120], ids=["ample_kv", "tight_kv"])
def test_fast_path_equals_slow_path(policy, kv_blocks):
    fast, slow = both_paths(policy, kv_blocks, block_size=8)
    for name in ("first_scheduled_s", "first_token_s", "completed_s", "preemptions", "token_offsets",
                 "token_times_s", "replica_id"):
        assert np.array_equal(getattr(fast.records, name), getattr(slow.records, name)), name
    for name in ("start_s", "duration_s", "batch_size", "num_prefill_tokens", "num_decode_tokens",
                 "kv_blocks_used"):
        assert np.array_equal(getattr(fast.iterations, name), getattr(slow.iterations, name)), name


def test_tight_kv_case_preempts_and_fast_path_actually_skips_events():
    """The tight case exercises preemption for vLLM, and the fast path takes fewer scheduling decisions."""
    fast, _slow = both_paths("vllm", 120, block_size=8)
    assert fast.records.preemptions.sum() > 0
    decisions = {}
    for label, flag in (("fast", True), ("slow", False)):
        import policies.vllm as vllm_module
        calls = []
        original = vllm_module.VLLMv0.schedule
        vllm_module.VLLMv0.schedule = lambda self, now, _o=original, _calls=calls: _calls.append(now) or _o(self, now)
        try:
            arrivals, prompts, outputs = random_workload(300, seed=7, rate_qps=30)
            run("vllm", arrivals, prompts, outputs, predictor=linear(kv_ms=0.01), kv_blocks=120, block_size=8,
                fast_decode_runs=flag)
        finally:
            vllm_module.VLLMv0.schedule = original
        decisions[label] = len(calls)
    assert decisions["fast"] < decisions["slow"] / 2


@pytest.mark.parametrize("num_steps", [1, 5, SHORT_RUN_STEPS, SHORT_RUN_STEPS + 1, 300])
def test_step_ends_short_and_long_runs_round_alike(num_steps):
    """A decode run's step ends are summed in plain Python for short runs and with numpy for long ones:
    both must land on the instants that rounding each step alone (stepping) reaches, half-nanoseconds
    and sub-nanosecond steps included."""
    rng = np.random.default_rng(num_steps)
    seconds = rng.uniform(5e-3, 40e-3, num_steps)
    seconds[::3] = np.round(seconds[::3] * 1e9) / 1e9 + 0.5e-9  # exact half nanoseconds where representable
    seconds[1::7] = 0.3e-9  # rounds to 0 ns: a step still takes 1 ns
    start = 123_456_789_012
    expected = np.cumsum([second_to_duration_ns(s) for s in seconds]) + start
    assert step_ends_ns(seconds, start) == expected.tolist()


def test_sglang_s_last_one_token_chunk_of_a_recompute_does_not_start_a_decode_run():
    # Found by the property test: with 1-token chunks, a preempted request recomputing its prompt and
    # outputs ends its chunked prefill on a one-token step that looks like a decode. SGLang admits the
    # waiting requests on the next step, so the replica must not advance a run of decodes from there.
    from scenarios import Pool, Scenario, fast_path_matches_stepping, simulate_scenario

    s = Scenario(pools={"colocated": Pool(policy="sglang", params={"chunked_prefill_size": 1}, num_replicas=1,
                                          pp=1, kv_blocks=32)},
                 router="round_robin", fast_decode_runs=False, block_size=1, kv_watermark=0.0, max_model_len=32,
                 workload_seed=0, num_requests=20, rate_qps=20.0, max_prompt=32, max_output=32,
                 streaming_layers=0, seed=None, content_unit_tokens=0)
    assert simulate_scenario(s).out.records.preemptions.sum() > 0
    assert fast_path_matches_stepping(s)


def test_a_router_reading_prefix_caches_mid_run_sees_the_blocks_the_run_has_taken_so_far():
    # Found by bench/fuzz.py (seed 31377): a run of decodes advanced in one step took its iterations' KV
    # blocks when it ended, so a prefix-aware router asking mid-run found cached blocks that stepping had
    # already evicted for those decodes, and sent request 28 elsewhere. Replica.catch_up takes them first.
    from scenarios import Pool, Scenario, fast_path_matches_stepping, simulate_scenario

    s = Scenario(pools={"colocated": Pool(policy="vllm_v1", params={"max_num_batched_tokens": 5, "max_num_seqs": 5,
                                                                    "long_prefill_token_threshold": 1},
                                          num_replicas=2, pp=1, kv_blocks=48)},
                 router="prefix_aware", fast_decode_runs=True, block_size=1, kv_watermark=0.0, max_model_len=32,
                 workload_seed=645499990, num_requests=40, rate_qps=20.0, max_prompt=8, max_output=32,
                 streaming_layers=0, seed=31377, content_unit_tokens=16)
    assert simulate_scenario(s).out.records.preemptions.sum() > 0
    assert fast_path_matches_stepping(s)


@pytest.mark.parametrize("params, kv_blocks, block_size, workload", [
    # Found by bench/fuzz.py: seed 49658 (decodes in their own batch), seed 6611 (enable_mixed_chunk).
    ({"chunked_prefill_size": 3, "max_running_requests": 245, "enable_mixed_chunk": False}, 48, 4,
     {"workload_seed": 365962616, "rate_qps": 20.0, "max_prompt": 32, "max_output": 64}),
    ({"enable_mixed_chunk": True}, 16, 16,
     {"workload_seed": 1708866333, "rate_qps": 2000.0, "max_prompt": 64, "max_output": 128}),
], ids=["decode_batch", "mixed_chunk"])
def test_sglang_s_longest_prefix_order_is_looked_at_again_while_decodes_evict(params, kv_blocks, block_size,
                                                                              workload):
    # With schedule_policy=lpm, the blocks a run of decodes takes evict cached prefixes, which can put
    # another waiting request, one that fits, at the head of the order. Stepping admits it at once; the
    # replica must not advance the decodes as one run while requests wait.
    from scenarios import Pool, Scenario, fast_path_matches_stepping

    s = Scenario(pools={"colocated": Pool(policy="sglang", params={**params, "schedule_policy": "lpm",
                                                                   "enable_prefix_caching": True},
                                          num_replicas=1, pp=1, kv_blocks=kv_blocks)},
                 router="round_robin", fast_decode_runs=True, block_size=block_size, kv_watermark=0.0,
                 max_model_len=128 if block_size == 4 else 256, num_requests=40, streaming_layers=0, seed=None,
                 content_unit_tokens=16, **workload)
    assert fast_path_matches_stepping(s)
