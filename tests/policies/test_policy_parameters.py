"""Policy parameters are checked from each policy's one declaration (`parameters`), before anything runs."""
import inspect

import pytest

from policies import POLICIES, Batch, Policy
from policies.base import Parameter, check_parameters
from simulator.config import ConfigError
from simulator.run import SimulationConfig, run_simulation


def config(policy: dict) -> SimulationConfig:
    return SimulationConfig.from_dict({
        "model": "llama-2-7b", "hardware": "h100", "predictor": "linear", "policy": policy,
        "workload": {"trace": None, "arrival": "poisson", "rate_qps": 5, "lengths": "uniform",
                     "min_tokens": 64, "max_tokens": 512, "num_requests": 20}})


def test_every_shipped_policy_declares_exactly_the_parameters_it_takes():
    for name, cls in POLICIES.items():
        taken = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kv", "requests")]
        assert sorted(p.name for p in cls.parameters) == sorted(taken), name
        assert check_parameters(name, {}) is cls


@pytest.mark.parametrize("policy, message", [
    ({"name": "sarathi", "chunk_size": 0}, r"policy\.chunk_size=0: expected a whole number >= 1"),
    ({"name": "sarathi", "chunk_size": -512}, r"policy\.chunk_size=-512: expected a whole number >= 1"),
    ({"name": "sarathi", "max_batch_size": 0}, r"policy\.max_batch_size=0: expected a whole number >= 1"),
    ({"name": "vllm", "max_num_seqs": 0}, r"policy\.max_num_seqs=0"),
    # Once read as "not set": the default budget ran while the summary recorded 0.
    ({"name": "vllm", "max_num_batched_tokens": 0}, r"policy\.max_num_batched_tokens=0"),
    ({"name": "vllm", "max_num_batched_tokens": 2048},
     r"max_num_batched_tokens=2048 is below the model's max_model_len=4096"),
    ({"name": "orca", "max_batch_size": -1}, r"policy\.max_batch_size=-1"),
    ({"name": "faster_transformer", "max_batch_size": 0}, r"policy\.max_batch_size=0"),
    ({"name": "shortest_prompt_first", "max_num_batched_tokens": 0}, r"policy\.max_num_batched_tokens=0"),
    ({"name": "sarathi", "chunk_size": 1.5}, r"policy\.chunk_size=1\.5: expected a whole number"),
    ({"name": "sarathi", "chunk_size": True}, r"policy\.chunk_size=True: expected a whole number"),
    ({"name": "sarathi", "params": {"chunk_size": "512"}}, r"policy\.chunk_size='512'"),
    ({"name": "orca", "chunk_size": 64},
     r"policy\.chunk_size is not a parameter of policy 'orca' \(it takes: max_batch_size\)"),
    ({"name": "vllm_v1", "params": {"enable_prefix_caching": 1}},
     r"policy\.enable_prefix_caching=1: expected true or false"),
    ({"name": "sarathi", "params": {"enable_prefix_caching": "yes"}},
     r"policy\.enable_prefix_caching='yes': expected true or false"),
    ({"name": "sglang", "params": {"schedule_policy": "lifo"}},
     r"policy\.schedule_policy='lifo': expected one of fcfs, lpm"),
    ({"name": "vllm_v1", "params": {"long_prefill_token_threshold": -1}},
     r"policy\.long_prefill_token_threshold=-1: expected a whole number >= 0"),
    ({"name": "orca", "enable_prefix_caching": True},
     r"policy\.enable_prefix_caching is not a parameter of policy 'orca'"),
])
def test_a_parameter_out_of_range_stops_before_anything_runs(policy, message, nothing_runs):
    with pytest.raises(ConfigError, match=message):
        run_simulation(config(policy))


def test_the_smallest_allowed_values_run():
    result = run_simulation(config({"name": "sarathi", "chunk_size": 1, "max_batch_size": 1}))
    assert result.summary["completed"] == 20 and result.iterations["batch_size"].max() == 1
    assert result.iterations["num_prefill_tokens"].max() == 1


class OneAtATime(Policy):
    """A new policy: Orca's batching (whole prefills, full length reserved) with `max_running` requests."""

    parameters = (Parameter("max_running", "running requests at most"),)

    def __init__(self, kv, requests, max_running: int = 1):
        super().__init__(kv, requests)
        self.max_running = max_running

    def schedule(self, now_s):
        while self.waiting and len(self.running) < self.max_running:
            r = self.waiting[0]
            if not self.admit(r, int(self.requests.prompt_tokens[r] + self.requests.output_tokens[r])):
                break
        return Batch.of(self.running, self.requests.pending_tokens_of(self.running))


class Undeclared(OneAtATime):
    parameters = ()


@pytest.fixture()
def registered():
    POLICIES["one_at_a_time"], POLICIES["undeclared"] = OneAtATime, Undeclared
    yield
    del POLICIES["one_at_a_time"], POLICIES["undeclared"]


def test_a_new_policy_gets_the_same_checks_from_its_declaration(registered, nothing_runs):
    with pytest.raises(ConfigError, match=r"policy\.max_running=0: expected a whole number >= 1 "
                                          r"\(running requests at most\)"):
        run_simulation(config({"name": "one_at_a_time", "params": {"max_running": 0}}))
    with pytest.raises(ConfigError, match=r"Undeclared\.__init__ takes \['max_running'\] but "
                                          r"Undeclared\.parameters declares \[\]"):
        run_simulation(config({"name": "undeclared"}))


def test_a_new_policy_with_a_valid_value_runs(registered):
    result = run_simulation(config({"name": "one_at_a_time", "params": {"max_running": 2}}))
    assert result.summary["completed"] == 20 and result.iterations["batch_size"].max() == 2
