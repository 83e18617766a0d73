"""Invariants on random workloads, for every policy: tokens once each, KV within capacity, time moves forward,
every request finishes or is rejected with a reason."""
import numpy as np
import pytest
from simkit import linear, random_workload, run

POLICIES = ["vllm", ("sarathi", {"chunk_size": 128}), ("orca", {"max_batch_size": 8}),
            ("faster_transformer", {"max_batch_size": 4}), "shortest_prompt_first",
            ("vllm_v1", {"max_num_batched_tokens": 128}), ("sglang", {"chunked_prefill_size": 128})]
KV_BLOCKS, BLOCK_SIZE = 100, 8


@pytest.fixture(scope="module", params=POLICIES, ids=str)
def outcome(request):
    arrivals, prompts, outputs = random_workload(250, seed=11, rate_qps=40, max_prompt=500, max_output=150)
    # A few requests too long for the context, and one that fits the context but not the KV cache.
    prompts[5], outputs[5] = 900, 200
    prompts[9], outputs[9] = 790, 5
    return run(request.param, arrivals, prompts, outputs, predictor=linear(kv_ms=0.01), kv_blocks=KV_BLOCKS,
               block_size=BLOCK_SIZE, max_model_len=1000, kv_watermark=0.01)


def test_every_request_completes_or_is_rejected_with_a_reason(outcome):
    r = outcome.records
    assert r.reject_reason[5].startswith("prompt + output tokens exceed max_model_len")
    assert r.reject_reason[9].startswith("prompt + output tokens exceed one KV cache")
    assert r.rejected.sum() == 2
    assert np.all(np.isfinite(r.completed_s[~r.rejected]))
    assert np.all(np.isnan(r.completed_s[r.rejected]))


def test_every_output_token_is_produced_exactly_once(outcome):
    r = outcome.records
    produced = np.diff(r.token_offsets)
    assert np.array_equal(produced[~r.rejected], r.output_tokens[~r.rejected])
    assert np.all(produced[r.rejected] == 0)


def test_kv_cache_never_exceeds_capacity(outcome):
    assert outcome.iterations.kv_blocks_used.max() <= KV_BLOCKS
    assert outcome.iterations.kv_blocks_used.min() >= 0


def test_time_never_goes_backwards(outcome):
    r, it = outcome.records, outcome.iterations
    for i in np.flatnonzero(~r.rejected):
        times = r.token_times_s[r.token_offsets[i]: r.token_offsets[i + 1]]
        assert np.all(np.diff(times) > 0)
        assert r.arrived_s[i] <= r.first_scheduled_s[i] < r.first_token_s[i] == times[0]
        assert times[-1] == r.completed_s[i]
    # One replica, one stage: iterations never overlap and never leave time out of order.
    ends = it.start_s + it.duration_s
    assert np.all(it.start_s[1:] >= ends[:-1] - 1e-12)
    assert np.all(it.duration_s > 0)


def test_iterations_account_for_every_token(outcome):
    r, it = outcome.records, outcome.iterations
    served = ~r.rejected
    # Each output token but the last of each request was fed back once as a decode token, unless a
    # preemption folded it into a recompute prefill.
    decode_tokens = it.num_decode_tokens.sum()
    assert decode_tokens <= (r.output_tokens[served] - 1).sum()
    tokens_to_compute = r.prompt_tokens[served].sum() + (r.output_tokens[served] - 1).sum()
    assert it.num_prefill_tokens.sum() + decode_tokens >= tokens_to_compute
    if r.preemptions.sum() == 0:
        assert decode_tokens == (r.output_tokens[served] - 1).sum()
        assert it.num_prefill_tokens.sum() == r.prompt_tokens[served].sum()
