"""Policies decide batches from request state alone: call `schedule` directly and check the batch."""
import re
from pathlib import Path

import numpy as np
import pytest

from policies import POLICIES, Batch, Policy
from simulator.kv_cache import KVCache
from simulator.request import RequestState

REPO = Path(__file__).resolve().parents[2]


def setup(policy_name, prompts, outputs, num_blocks=1000, block_size=16, max_model_len=4096, **params):
    n = len(prompts)
    requests = RequestState.create(np.zeros(n), prompts, outputs, max_model_len=max_model_len)
    kv = KVCache(num_blocks, block_size, np.zeros(n, np.int64))
    policy = POLICIES[policy_name](kv, requests, **params)
    for r in range(n):
        policy.add_request(r)
    return policy, requests


def apply(batch: Batch, requests: RequestState) -> None:
    """What a replica does after a batch: compute the tokens, emit where the last known token was computed."""
    for r, n in zip(batch.request_ids, batch.num_tokens):
        requests.computed_tokens[r] += n
        if requests.computed_tokens[r] == requests.prompt_tokens[r] + requests.generated_tokens[r]:
            requests.generated_tokens[r] += 1


def as_pairs(batch):
    return list(zip(batch.request_ids, batch.num_tokens))


def test_registry_holds_every_policy_with_a_paper_docstring():
    assert {"orca", "vllm", "sarathi", "faster_transformer", "shortest_prompt_first"} <= set(POLICIES)
    for name, cls in POLICIES.items():
        doc = __import__(cls.__module__, fromlist=["_"]).__doc__
        assert issubclass(cls, Policy) and "Reproduces" in doc or name == "shortest_prompt_first", name


def test_sarathi_spends_the_token_budget_decodes_first():
    # Requests 0, 1 are decoding; request 2 has 100 of 300 prompt tokens done; 3 and 4 wait (50, 400 tokens).
    policy, req = setup("sarathi", [20, 20, 300, 50, 400], [9, 9, 9, 9, 9], chunk_size=128)
    first = policy.schedule(0.0)  # admits everyone it can: 20 + 20 + 88 of request 2
    assert as_pairs(first) == [(0, 20), (1, 20), (2, 88)]
    apply(first, req)
    second = policy.schedule(0.0)
    # Decodes 0, 1 (1 token each), then request 2 continues (126 = 128 - 2 of its 212 left).
    assert as_pairs(second) == [(0, 1), (1, 1), (2, 126)]
    apply(second, req)
    third = policy.schedule(0.0)
    # 2 decodes, request 2's last 86 tokens, then new request 3 gets the remaining 40 of its 50.
    assert as_pairs(third) == [(0, 1), (1, 1), (2, 86), (3, 40)]


def test_sarathi_caps_the_batch_size():
    policy, _req = setup("sarathi", [4] * 6, [5] * 6, chunk_size=512, max_batch_size=4)
    assert len(policy.schedule(0.0)) == 4
    assert list(policy.waiting) == [4, 5]


def test_vllm_prefill_batch_respects_token_and_sequence_limits():
    policy, req = setup("vllm", [3000, 2000, 100, 100], [5] * 4, max_num_batched_tokens=4096, max_num_seqs=3)
    first = policy.schedule(0.0)
    assert as_pairs(first) == [(0, 3000)]  # 3000 + 2000 > 4096: FCFS stops at the first that does not fit
    apply(first, req)
    second = policy.schedule(0.0)
    assert as_pairs(second) == [(1, 2000), (2, 100)]  # then max_num_seqs = 3 running stops request 3
    apply(second, req)
    third = policy.schedule(0.0)
    assert as_pairs(third) == [(0, 1), (1, 1), (2, 1)]  # no room for a prefill: everyone decodes


def test_vllm_rejects_a_token_budget_below_the_context():
    from policies.base import new_policy
    from simulator.config import ConfigError

    requests = RequestState.create(np.zeros(1), [10], [5], max_model_len=4096)
    kv = KVCache(1000, 16, np.zeros(1, np.int64))
    with pytest.raises(ConfigError, match="max_num_batched_tokens=1000 is below the model's max_model_len=4096"):
        new_policy("vllm", {"max_num_batched_tokens": 1000}, kv, requests)
    assert new_policy("vllm", {"max_num_batched_tokens": 4096}, kv, requests).max_num_batched_tokens == 4096


def test_orca_admits_up_to_its_batch_and_mixes_prefill_with_decodes():
    policy, req = setup("orca", [10, 20, 30], [5, 5, 5], max_batch_size=2)
    first = policy.schedule(0.0)
    assert as_pairs(first) == [(0, 10), (1, 20)]
    apply(first, req)
    assert as_pairs(policy.schedule(0.0)) == [(0, 1), (1, 1)]
    # Request 0 finishes: request 2 joins with its whole prompt next to request 1's decode.
    policy.kv.free(np.array([0]))
    policy.finish(np.array([0]))
    assert as_pairs(policy.schedule(0.0)) == [(1, 1), (2, 30)]


def test_faster_transformer_waits_for_the_whole_batch():
    policy, _req = setup("faster_transformer", [10, 20, 30], [5, 5, 5], max_batch_size=2)
    assert as_pairs(policy.schedule(0.0)) == [(0, 10), (1, 20)]
    policy.kv.free(np.array([0]))
    policy.finish(np.array([0]))
    assert [r for r, _ in as_pairs(policy.schedule(0.0))] == [1]  # request 2 does not join
    policy.kv.free(np.array([1]))
    policy.finish(np.array([1]))
    assert as_pairs(policy.schedule(0.0)) == [(2, 30)]


def test_docs_show_the_example_policy_in_full():
    source = (REPO / "policies" / "shortest_prompt_first.py").read_text()
    doc = (REPO / "docs" / "policies.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert source in blocks, "docs/policies.md must show policies/shortest_prompt_first.py verbatim"
