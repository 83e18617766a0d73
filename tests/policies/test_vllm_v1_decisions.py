"""servesim's vllm_v1 policy against vLLM's own V1 scheduler (v0.33.0), decision by decision.

bench/vllm_v1_decisions.py ran vLLM's scheduler on a CPU over the scenarios of
simulator/decision_scenarios.py and saved every step's batch, the cached tokens each request found when
admitted and the preemptions (data/validation/scheduler/vllm_v1/), with its synchronous Scheduler and with
the AsyncScheduler its engine uses by default (async/). Here the policy runs the same scenarios, with
`async_scheduling` for the second, and must make the same decisions, apart from the differences
docs/policies.md explains (a few blocks' eviction order; blocks a request fills while decoding are cached
when it leaves, not as they fill). Then three rules of vLLM V1 computed by hand.
"""
import numpy as np
import pytest

from policies import POLICIES
from simulator.decision_scenarios import SAVED, SAVED_ASYNC, SCENARIOS, our_log, saved_log
from simulator.kv_cache import KVCache
from simulator.request import RequestState
from simulator.stepping import compare_logs, run_steps

SCHEDULERS = {"sync": (False, SAVED), "async": (True, SAVED_ASYNC)}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_without_prefix_caching_every_decision_is_vllms(scheduler):
    async_scheduling, saved = SCHEDULERS[scheduler]
    name = "mooncake-tight-nocache"
    ours, theirs = our_log(SCENARIOS[name], async_scheduling), saved_log(name, saved)
    assert ours.scheduled == theirs.scheduled
    assert ours.admitted == theirs.admitted
    assert ours.preempted == theirs.preempted == []
    assert ours.steps == theirs.steps


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("name", ["mooncake-ample", "mooncake-tight", "mooncake-a100-threshold"])
def test_with_prefix_caching_the_mooncake_slice_runs_as_in_vllm(name, scheduler):
    async_scheduling, saved = SCHEDULERS[scheduler]
    result = compare_logs(our_log(SCENARIOS[name], async_scheduling), saved_log(name, saved))
    assert result["steps_identical"] >= 0.996 * result["steps"], result
    assert result["ours"]["preemptions"] == result["theirs"]["preemptions"], result
    assert result["ours"]["steps"] == result["theirs"]["steps"], result
    ours, theirs = result["ours"]["cached_tokens"], result["theirs"]["cached_tokens"]
    assert abs(ours - theirs) <= 0.001 * theirs, result


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_chat_sessions_differ_only_where_a_turn_reads_blocks_its_previous_turn_is_still_decoding(scheduler):
    # The synthetic sessions send a turn while the previous one may still be generating; vLLM finds the
    # answer's blocks filled so far, the policy only once the answer is done (1.5 % fewer cached tokens).
    async_scheduling, saved = SCHEDULERS[scheduler]
    result = compare_logs(our_log(SCENARIOS["multiturn-small"], async_scheduling), saved_log("multiturn-small", saved))
    assert result["steps_identical"] >= 0.78 * result["steps"], result
    ours, theirs = result["ours"]["cached_tokens"], result["theirs"]["cached_tokens"]
    assert 0.97 * theirs <= ours <= theirs, result
    assert abs(result["ours"]["preemptions"] - result["theirs"]["preemptions"]) <= 1, result


def policy(prompts, outputs, num_blocks, block_size=4, **params):
    requests = RequestState.create(np.zeros(len(prompts)), prompts, outputs, 100)
    kv = KVCache(num_blocks, block_size, np.zeros(len(prompts), np.int64))
    return POLICIES["vllm_v1"](kv, requests, **params)


def test_the_long_prefill_cap_spares_a_request_that_is_alone():
    # Cap 4 tokens, budget 16. Alone, A's 10-token prompt runs whole; with B waiting too, both are capped.
    alone = run_steps(policy([10], [1], 100, max_num_batched_tokens=16, long_prefill_token_threshold=4),
                      np.array([0]))
    assert alone.scheduled == [(0, 0, 10)]
    together = run_steps(policy([10, 10], [1, 1], 100, max_num_batched_tokens=16, long_prefill_token_threshold=4),
                         np.array([0, 0]))
    assert together.scheduled[:2] == [(0, 0, 4), (0, 1, 4)]


def test_a_request_is_admitted_only_when_its_whole_prompt_fits():
    # 4 blocks of 4 tokens, budget 4. A (8-token prompt, 4 outputs) prefills in steps 0-1 and holds
    # 3 blocks from step 2. B (12 tokens) arrives at step 1. Its first chunk (3 tokens, 1 block) would fit
    # at step 2, but its whole prompt (3 blocks) does not: vLLM V1 keeps it waiting until A finishes (end
    # of step 4). Admitting on the first chunk alone, B is preempted at step 3 when A's next decode
    # needs the block.
    gated = run_steps(policy([8, 12], [4, 1], 4, max_num_batched_tokens=4), np.array([0, 1]))
    assert gated.admitted == [(0, 0, 0), (5, 1, 0)] and gated.preempted == []
    ungated = run_steps(policy([8, 12], [4, 1], 4, max_num_batched_tokens=4, scheduler_reserve_full_isl=False),
                        np.array([0, 1]))
    assert ungated.admitted[:2] == [(0, 0, 0), (2, 1, 0)] and ungated.preempted[0] == (3, 1)


def test_async_scheduling_frees_a_finished_request_one_step_late():
    # 4 blocks of 4 tokens, budget 8. A (request 0: 4-token prompt, 3 outputs) and C (1: 3 tokens, 6
    # outputs) prefill at step 0; A emits its last token at the end of step 2, when the two hold all 4
    # blocks. B (2: 8 tokens, 2 blocks) arrives at step 1 and waits for A's blocks. The synchronous
    # scheduler frees them before scheduling step 3 and admits B there. Scheduled a step ahead, vLLM
    # still counts A as running at step 3 (it schedules nothing for it but C's decode) and frees its
    # blocks after that scheduling, so B starts at step 4.
    args = ([4, 3, 8], [3, 6, 1], 4)
    sync = run_steps(policy(*args, max_num_batched_tokens=8), np.array([0, 0, 1]))
    assert sync.admitted[-1] == (3, 2, 0)
    ahead = run_steps(policy(*args, max_num_batched_tokens=8, async_scheduling=True), np.array([0, 0, 1]))
    assert [row for row in ahead.scheduled if row[0] == 3] == [(3, 1, 1)]
    assert ahead.admitted[-1] == (4, 2, 0)
    assert sync.preempted == ahead.preempted == []


def test_async_scheduling_runs_at_once_what_waits_only_on_finished_requests():
    # A alone (4-token prompt, 2 outputs) fills the 2 blocks; B (8 tokens) waits. Nothing else runs when A
    # finishes, so the engine reads A's last token at once and admits B at the next step, as the
    # synchronous scheduler does: no step passes empty.
    args = ([4, 8], [2, 1], 2)
    sync = run_steps(policy(*args, max_num_batched_tokens=8), np.array([0, 1]))
    ahead = run_steps(policy(*args, max_num_batched_tokens=8, async_scheduling=True), np.array([0, 1]))
    assert ahead.scheduled == sync.scheduled == [(0, 0, 4), (1, 0, 1), (2, 1, 8)]
