"""Prefix reuse in real execution (simulator/execute/prefix_rows.py and the runner): cached tokens' K/V is
copied, not recomputed, and a request served from the cache computes what it would have computed alone."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from policies import POLICIES
from simulator.config import ModelConfig
from simulator.content import TokenContent
from simulator.execute.loop import execute
from simulator.execute.prefix_rows import ContentTokens, PrefixRows
from simulator.execute.runner import TorchModelRunner
from simulator.execute.runner import forward as real_forward
from simulator.prefix_cache import PrefixCachingKV
from simulator.request import RequestState

torch.set_num_threads(1)

TINY = {"name": "tiny-prefix", "num_layers": 2, "hidden_size": 128, "num_q_heads": 4, "num_kv_heads": 2,
        "head_dim": 32, "intermediate_size": 256, "vocab_size": 300, "max_model_len": 512}
BS = 8  # block size of every test here


def two_requests(arrivals=(0.0, 1000.0), outputs=(4, 4)) -> RequestState:
    """Two 40-token prompts (5 blocks of 8) whose first 3 blocks are the same text."""
    content = TokenContent(BS, [np.array([1, 2, 3, 4, 5]), np.array([1, 2, 3, 7, 8])])
    return RequestState.create(np.array(arrivals), np.array([40, 40]), np.array(outputs), 512, content=content)


def rows(*first_rows):
    return np.concatenate([np.arange(r, r + BS) for r in first_rows])


def test_store_rows_for_a_hit_computed_by_an_earlier_request():
    """Request 0 fills blocks 0-4 (copied out to the store); once it has left, request 1 hits blocks 0-2:
    their rows come from the store into its slot, and only the two blocks it computes go out."""
    requests = two_requests()
    kv = PrefixCachingKV(20, BS, np.zeros(2, np.int64), 0, requests)
    store = PrefixRows(kv, requests, store_start=1000)
    assert kv.allocate(0, 40) and kv.blocks_of[0].tolist() == [0, 1, 2, 3, 4]
    copies = store.before_step([0], [0], [40], [True], [100])
    assert copies.store_src == copies.layer_src == []
    src, dst = store.after_step([0], [0], [40], [100])
    assert np.array_equal(src, np.arange(100, 140)) and np.array_equal(dst, np.arange(1000, 1040))
    requests.computed_tokens[0] = 40
    kv.free([0])

    assert kv.prefix_hit_tokens(1) == 24
    assert kv.allocate(1, 40)
    requests.start_from_cache(1, 24)
    new_blocks = kv.blocks_of[1][3:]
    assert kv.blocks_of[1][:3].tolist() == [0, 1, 2]
    copies = store.before_step([1], [24], [16], [True], [300])
    assert np.array_equal(store.rows(copies.store_src), rows(1000, 1008, 1016))
    assert np.array_equal(store.rows(copies.store_dst), rows(300, 308, 316))
    src, dst = store.after_step([1], [24], [16], [300])
    assert np.array_equal(src, rows(324, 332))
    assert np.array_equal(dst, rows(*(1000 + b * BS for b in new_blocks)))
    assert store.facts() | {"store_tokens": 0} == {"store_tokens": 0, "blocks_copied_in": 3,
                                                   "blocks_copied_out": 7, "same_step_hit_blocks": 0}


def test_a_hit_on_blocks_computed_in_the_same_step_is_copied_layer_by_layer():
    """Both requests start in one step: request 0's prompt blocks are cached when it is scheduled, so
    request 1 hits blocks 0-2 that nobody has computed yet; they are copied slot to slot in each layer."""
    requests = two_requests(arrivals=(0.0, 0.0))
    kv = PrefixCachingKV(20, BS, np.zeros(2, np.int64), 0, requests)
    store = PrefixRows(kv, requests, store_start=1000)
    assert kv.allocate(0, 40)
    assert kv.prefix_hit_tokens(1) == 24 and kv.allocate(1, 40)
    requests.start_from_cache(1, 24)
    copies = store.before_step([0, 1], [0, 24], [40, 16], [True, True], [100, 300])
    assert copies.store_src == [] and copies.layer_src == [100, 108, 116] and copies.layer_dst == [300, 308, 316]
    assert store.same_step_blocks == 3


def test_content_token_ids_follow_the_shared_blocks():
    requests = two_requests()
    tokens = ContentTokens(requests, BS)
    a = tokens.token_ids(0, np.arange(48), 300)
    b = tokens.token_ids(1, np.arange(48), 300)
    assert np.array_equal(a[:24], b[:24]) and not np.array_equal(a[24:40], b[24:40])
    assert (a[40:] == -1).all() and tokens.covered_tokens(0) == 40 and (a[:40] >= 0).all()


def serve(enable_prefix_caching: bool, arrivals, monkeypatch):
    """Serve two_requests on the tiny model with vLLM V1's policy; the logits of every step, the runner."""
    import simulator.execute.runner as runner_module

    monkeypatch.setattr(runner_module, "sample", lambda logits, temperature: logits.argmax(-1))
    logits = []

    def spy(*args):
        out = real_forward(*args)
        logits.append(out.clone())
        return out

    monkeypatch.setattr(runner_module, "forward", spy)
    runner = TorchModelRunner(ModelConfig(**TINY), "cpu", capacity_tokens=600, store_tokens=20 * BS)
    release = runner.release

    def release_and_scribble(request_ids):
        """A freed slot's rows are overwritten (as the next request to take them would), so nothing can
        read a finished request's K/V from its old slot."""
        for r in request_ids:
            start, size = runner.slot_start.get(int(r)), runner.slot_size.get(int(r))
            if start is not None:
                for cache in (*runner.kv.k, *runner.kv.v):
                    cache[start:start + size] = torch.randn_like(cache[start:start + size])
        release(request_ids)

    runner.release = release_and_scribble
    policy = functools.partial(POLICIES["vllm_v1"], enable_prefix_caching=enable_prefix_caching)
    out = execute(two_requests(arrivals), policy, runner, 20, block_size=BS, kv_watermark=0.0)
    return logits, runner, out


@pytest.mark.parametrize("arrivals", [(0.0, 1000.0), (0.0, 0.0)], ids=["after", "same_step"])
def test_a_request_served_from_the_cache_computes_what_it_computes_alone(arrivals, monkeypatch):
    """Request 1 reuses request 0's first three blocks (stored after request 0 left, or computed in the same
    step): every logit it produces equals the run without prefix caching, which computes all 40 tokens."""
    cached, runner, out = serve(True, arrivals, monkeypatch)
    alone, plain_runner, plain = serve(False, arrivals, monkeypatch)
    assert runner.prefix is not None and plain_runner.prefix is None
    assert out.records.cached_tokens.tolist() == [0, 24] and plain.records.cached_tokens.tolist() == [0, 0]
    assert runner.prefix.blocks_in == 3
    assert runner.prefix.same_step_blocks == (3 if arrivals[1] == 0.0 else 0)
    assert out.prefix_cache["hit_blocks"] == 3
    computed = out.compositions.groupby("request_id")["num_tokens"].sum().tolist()
    assert computed == [43, 19] and plain.compositions.groupby("request_id")["num_tokens"].sum().tolist() == [43, 43]
    # Each step's logits are one row per request of the batch, in slot order; both runs make the same steps.
    assert len(cached) == len(alone)
    for a, b in zip(cached, alone):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_runner_without_room_for_the_store_refuses_the_cache():
    runner = TorchModelRunner(ModelConfig(**TINY), "cpu", capacity_tokens=600, store_tokens=8)
    with pytest.raises(ValueError, match="store rows"):
        execute(two_requests(), POLICIES["vllm_v1"], runner, 20, block_size=BS, kv_watermark=0.0)


@pytest.mark.parametrize("policy", ["vllm_v1", "sglang"])
@pytest.mark.parametrize("kv_blocks", [10_000, 120], ids=["ample_kv", "tight_kv"])
def test_executor_with_predicted_times_is_the_simulator_with_a_prefix_cache(policy, kv_blocks):
    """Driven by predicted times, the executor hits, evicts and preempts exactly as the simulator does."""
    from simulator.cluster import simulate
    from simulator.execute.loop import PredictorRunner
    from simulator.linear_predictor import LinearPredictor

    rng = np.random.default_rng(11)
    n = 80
    shared = [rng.integers(0, 1 << 40, 12) for _ in range(4)]  # four system prompts of up to 12 blocks
    keys = [np.concatenate([shared[rng.integers(4)][: rng.integers(1, 13)], rng.integers(0, 1 << 40, rng.integers(1, 8))])
            for _ in range(n)]
    prompts = np.array([len(k) * BS for k in keys])
    outputs = rng.integers(1, 30, n)
    arrivals = np.cumsum(rng.exponential(1 / 20.0, n))
    predictor = LinearPredictor(fixed_s=0.01, per_prefill_token_s=1e-4, per_decode_token_s=5e-4,
                                per_kv_token_s=1e-6)

    def requests():
        return RequestState.create(arrivals, prompts, outputs, 100_000, content=TokenContent(BS, keys))

    make_policy = POLICIES[policy]
    sim = simulate(requests(), make_policy, predictor, kv_blocks, block_size=BS, kv_watermark=0.0)
    ex = execute(requests(), make_policy, PredictorRunner(predictor), kv_blocks, block_size=BS, kv_watermark=0.0)
    for name in ("first_token_s", "completed_s", "preemptions", "cached_tokens", "token_times_s"):
        assert np.array_equal(getattr(sim.records, name), getattr(ex.records, name), equal_nan=True), name
    for name in ("start_s", "duration_s", "batch_size", "num_prefill_tokens", "kv_blocks_used"):
        assert np.array_equal(getattr(sim.iterations, name), getattr(ex.iterations, name)), name
    # The simulator records a run of decodes' cached blocks as they were at its start (simulator/recorder.py);
    # the executor steps one at a time, so it sees blocks the run's growth evicted: never more.
    diff = sim.iterations.kv_blocks_cached.astype(int) - ex.iterations.kv_blocks_cached
    assert (diff >= 0).all() and (diff == 0).mean() > 0.8
    assert sim.prefix_cache == ex.prefix_cache and ex.prefix_cache["hit_blocks"] > 0
    if kv_blocks == 120:
        assert ex.prefix_cache["evictions"] > 0


def test_the_shipped_mooncake_slice_is_what_the_plan_writes(tmp_path):
    """data/validation/h100/fidelity_prefix/mooncake_slice.jsonl.gz is regenerated byte for byte: every
    request of the trace's first 25 conversations, in trace order."""
    import gzip
    import json

    from simulator.execute.plan import MOONCAKE_SLICE, mooncake_slice
    from simulator.paths import REPO_ROOT

    made = mooncake_slice(out=str(tmp_path / "slice.jsonl.gz"))
    assert (tmp_path / "slice.jsonl.gz").read_bytes() == (REPO_ROOT / MOONCAKE_SLICE).read_bytes()
    assert made["requests"] == 52 and made["source_rows"] == sorted(made["source_rows"])
    with gzip.open(tmp_path / "slice.jsonl.gz", "rt") as file:
        rows = [json.loads(line) for line in file]
    conversations = {r["hash_ids"][1] if len(r["hash_ids"]) > 1 else ("alone", i) for i, r in enumerate(rows)}
    assert len(conversations) == 25


def test_which_policies_keep_a_prefix_store_and_how_long_plan_cells_take():
    from simulator.config import PolicyConfig
    from simulator.execute.cli import cell_seconds
    from simulator.execute.serve import caches_prefixes

    assert caches_prefixes(PolicyConfig(name="vllm_v1")) and caches_prefixes(PolicyConfig(name="sglang"))
    assert not caches_prefixes(PolicyConfig(name="vllm_v1", params={"enable_prefix_caching": False}))
    assert not caches_prefixes(PolicyConfig(name="sarathi")) and not caches_prefixes(PolicyConfig(name="orca"))
    assert caches_prefixes(PolicyConfig(name="sarathi", params={"enable_prefix_caching": True}))
    cell = {"predicted_served_s": 500.0, "predicted_busy_s": 80.0}
    assert cell_seconds(cell, "busy") == 80.0 and cell_seconds(cell, "wall") == 500.0
    assert cell_seconds({"predicted_served_s": 30.0}, "busy") == 30.0  # plans made before busy times
