"""Writing a new policy: subclass Policy, implement schedule, add it to POLICIES; run it by name."""
import numpy as np

from policies import POLICIES, Batch, Policy
from policies.base import Parameter
from simulator.run import SimulationConfig, run_simulation


class DecodeOnlyWhenBusy(Policy):
    """Test policy: never mixes; decodes while anything runs, else prefills the oldest request alone."""

    parameters = (Parameter("max_batch_size", "requests per batch"),)

    def __init__(self, kv, requests, max_batch_size: int = 4):
        super().__init__(kv, requests)
        self.max_batch_size = max_batch_size

    def schedule(self, now_s):
        if self.running:
            ids = self.schedule_decodes(list(self.running))
            return Batch.of(ids, [1] * len(ids))
        if self.waiting and self.admit(self.waiting[0], self.requests.pending_tokens(self.waiting[0])):
            r = self.running[-1]
            return Batch.of([r], [self.requests.pending_tokens(r)])
        return None


def test_a_new_policy_runs_by_name_and_its_behaviour_shows():
    POLICIES["decode_only_when_busy"] = DecodeOnlyWhenBusy
    try:
        cfg = SimulationConfig.from_dict({
            "model": "llama-2-7b", "hardware": "h100", "predictor": "linear",
            "workload": {"trace": None, "arrival": "poisson", "rate_qps": 20, "lengths": "uniform",
                         "min_tokens": 64, "max_tokens": 512, "num_requests": 40},
            "policy": {"name": "decode_only_when_busy", "params": {"max_batch_size": 4}},
        })
        result = run_simulation(cfg)
    finally:
        del POLICIES["decode_only_when_busy"]
    it = result.iterations
    assert result.summary["completed"] == 40
    # One request at a time: every iteration has exactly one request, prefill or decode, never both.
    assert it["batch_size"].max() == 1
    assert not ((it["num_prefill_tokens"] > 0) & (it["num_decode_tokens"] > 0)).any()
    starts, ends = result.requests["first_scheduled_s"].to_numpy(), result.requests["completed_s"].to_numpy()
    assert np.all(starts[1:] >= ends[:-1])


class ForgetsToAllocate(Policy):
    """A broken policy: schedules whole prompts without asking the KV cache."""

    def schedule(self, now_s):
        if not self.waiting:
            return None
        r = self.waiting.popleft()
        self.running.append(r)
        return Batch.of([r], [self.requests.pending_tokens(r)])


def test_a_policy_that_skips_kv_allocation_is_named():
    import pytest

    from simulator.cluster import simulate
    from simulator.linear_predictor import LinearPredictor
    from simulator.request import RequestState

    requests = RequestState.create(np.zeros(2), [10, 10], [3, 3], 4096)
    with pytest.raises(RuntimeError, match="ForgetsToAllocate scheduled requests without allocating"):
        simulate(requests, ForgetsToAllocate, LinearPredictor(0.01, 0.001, 0.002, 0.0), kv_blocks=100)


class FirstComeFirstServedCopy(Policy):
    """policies/shortest_prompt_first.py with the sort taken out: the copy docs/policies.md warns about."""

    def __init__(self, kv, requests, max_batch_size: int = 128, max_num_batched_tokens: int = 1000):
        super().__init__(kv, requests)
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens

    def schedule(self, now_s):
        ids = self.schedule_decodes(list(self.running)[: self.max_batch_size])
        tokens = [1] * len(ids)
        budget = self.max_num_batched_tokens - len(ids)
        for r in list(self.waiting):  # arrival order
            need = self.requests.pending_tokens(r)
            if len(ids) == self.max_batch_size or (need > budget and ids):
                break
            if not self.admit(r, need):
                break
            ids.append(r), tokens.append(need)
            budget -= need
        return Batch.of(ids, tokens)


def test_the_worked_examples_break_is_safe_sorted_and_stalls_a_fifo_queue():
    """docs/policies.md, "The `need > budget and ids` line": a prompt longer than the budget runs only in an
    empty batch. Sorted by length it is last, so it delays nobody; in arrival order everything behind it
    waits until every running request has finished."""
    from simulator.cluster import simulate
    from simulator.linear_predictor import LinearPredictor
    from simulator.request import RequestState

    def first_scheduled_and_completed(policy):
        # r0 short and decoding for a while, r1 longer than the 1,000-token budget, r2 short.
        requests = RequestState.create(np.array([0.0, 0.01, 0.02]), [100, 1500, 100], [50, 5, 5], 4096)
        out = simulate(requests, policy, LinearPredictor(0.01, 0.0, 0.0, 0.0), kv_blocks=1000)
        return out.records.first_scheduled_s, out.records.completed_s

    fifo_start, fifo_done = first_scheduled_and_completed(FirstComeFirstServedCopy)
    assert fifo_start[2] > fifo_done[0]  # r2 fitted the budget from r0's second token on, yet waited for r0
    assert fifo_start[1] >= fifo_done[0]  # ... behind r1, which could only run once nothing else did
    spf = POLICIES["shortest_prompt_first"]
    start, done = first_scheduled_and_completed(lambda kv, rs: spf(kv, rs, max_num_batched_tokens=1000))
    assert start[2] < done[0]  # the short prompt joins r0's decodes
    assert start[1] >= max(done[0], done[2])  # the long one runs alone, last
