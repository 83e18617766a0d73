"""Real execution (simulator/execute) on a CPU: serving loop, slot KV cache, a tiny real model, the CLI."""
from __future__ import annotations

import functools
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

from policies import POLICIES
from simulator import metrics
from simulator.cluster import simulate
from simulator.config import ModelConfig
from simulator.execute import cli
from simulator.execute.loop import STEP_COLUMNS, PredictorRunner, execute
from simulator.execute.runner import StepTiming, TorchModelRunner, graph_batch_size, graph_context_bound
from simulator.execute.serve import config_dict, run_execution
from simulator.execute.slots import SlotAllocator, SlotsFull
from simulator.linear_predictor import LinearPredictor
from simulator.request import RequestState
from simulator.run import SimulationConfig

torch.set_num_threads(1)  # tiny shapes: thread start-up would dominate

TINY = {"name": "tiny-exec", "num_layers": 2, "hidden_size": 128, "num_q_heads": 4, "num_kv_heads": 2,
        "head_dim": 32, "intermediate_size": 256, "vocab_size": 300, "max_model_len": 512}
POLICY_CASES = [("vllm", {}), ("sarathi", {"chunk_size": 32}), ("orca", {"max_batch_size": 3})]


def tiny_model() -> ModelConfig:
    return ModelConfig(**TINY)


def workload(n=40, seed=3, rate_qps=40.0, max_prompt=300, max_output=60):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.exponential(1 / rate_qps, n)), rng.integers(1, max_prompt, n),
            rng.integers(1, max_output, n))


def linear_predictor() -> LinearPredictor:
    return LinearPredictor(fixed_s=0.01, per_prefill_token_s=1e-4, per_decode_token_s=5e-4,
                           per_kv_token_s=1e-6)


class ReplayRunner(PredictorRunner):
    """Gives iteration i the duration `durations_s[i]`: re-serves an execution with its measured times."""

    def __init__(self, durations_s):
        super().__init__(None)
        self.durations_s = list(durations_s)
        self.calls = 0

    def execute(self, ids, num_tokens, kv_tokens, prompt_tokens, generated_tokens, reserve_tokens):
        self.calls += 1
        return StepTiming(path="predicted", padded_batch=len(ids),
                          duration_s=self.durations_s[self.calls - 1])


# --- the loop is the simulator's semantics --------------------------------------------------------------


@pytest.mark.parametrize("policy,params", POLICY_CASES, ids=[p for p, _ in POLICY_CASES])
@pytest.mark.parametrize("kv_blocks", [10_000, 90], ids=["ample_kv", "tight_kv"])
def test_executor_with_predicted_times_is_the_simulator(policy, params, kv_blocks):
    """Driven by the predictor's times on the busy clock, the executor reproduces the simulation exactly:
    same batches, same token times, same preemptions, same iteration rows."""
    arrivals, prompts, outputs = workload(120, seed=7, rate_qps=30)
    make_policy = functools.partial(POLICIES[policy], **params)

    def requests():
        return RequestState.create(arrivals, prompts, outputs, 100_000)

    sim = simulate(requests(), make_policy, linear_predictor(), kv_blocks, block_size=8, kv_watermark=0.0)
    ex = execute(requests(), make_policy, PredictorRunner(linear_predictor()), kv_blocks, block_size=8,
                 kv_watermark=0.0)
    for name in ("first_scheduled_s", "first_token_s", "completed_s", "preemptions", "token_offsets",
                 "token_times_s"):
        assert np.array_equal(getattr(sim.records, name), getattr(ex.records, name), equal_nan=True), name
    for name in ("start_s", "duration_s", "batch_size", "num_prefill_tokens", "num_decode_tokens",
                 "kv_blocks_used"):
        assert np.array_equal(getattr(sim.iterations, name), getattr(ex.iterations, name)), name
    if kv_blocks == 90 and policy == "vllm":
        assert ex.records.preemptions.sum() > 0  # the tight case really exercises preemption


# --- the tiny real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executed():
    """Each policy serving 14 requests on the tiny model (float32, CPU), with a tight KV cache for vLLM.

    Eight requests arrive at once and six more long after those finished (the clock jumps over the idle
    gap), so every scheduling decision is the same however fast this CPU runs the model."""
    _, prompts, outputs = workload(14, seed=5, max_prompt=90, max_output=12)
    arrivals = np.array([0.0] * 8 + [1000.0] * 6)
    out = {}
    for policy, params in POLICY_CASES:
        runner = TorchModelRunner(tiny_model(), "cpu", capacity_tokens=4000)
        requests = RequestState.create(arrivals, prompts, outputs, 512)
        kv_blocks = 40 if policy == "vllm" else 400
        result = execute(requests, functools.partial(POLICIES[policy], **params), runner, kv_blocks,
                         block_size=8, kv_watermark=0.0)
        out[policy] = (requests, result, runner, params, kv_blocks, (arrivals, prompts, outputs))
    return out


@pytest.mark.parametrize("policy", [p for p, _ in POLICY_CASES])
def test_every_token_once_positive_ttft_and_ordered_times(executed, policy):
    requests, result, runner, *_ = executed[policy]
    r = result.records
    counts = np.diff(r.token_offsets)
    assert counts.tolist() == requests.output_tokens.tolist()  # every requested token, exactly once
    table = metrics.request_table(r)
    assert (table["ttft_s"] > 0).all()
    assert (table["first_token_s"] >= table["first_scheduled_s"]).all()
    for i in range(len(requests)):
        times = r.token_times_s[r.token_offsets[i]: r.token_offsets[i + 1]]
        assert np.all(np.diff(times) > 0)
        assert times[-1] == table["completed_s"][i]
    assert runner.slots.used_tokens == 0 and not runner.slot_holders  # every slot returned


@pytest.mark.parametrize("policy", [p for p, _ in POLICY_CASES])
def test_tables_have_the_simulator_columns_and_consistent_steps(executed, policy):
    requests, result, *_ = executed[policy]
    assert list(metrics.request_table(result.records).columns) == [
        "request_id", "replica_id", "arrived_s", "prompt_tokens", "output_tokens", "first_scheduled_s",
        "first_token_s", "completed_s", "ttft_s", "tpot_s", "e2e_s", "normalized_e2e_s_per_token",
        "queueing_delay_s", "tbt_max_s", "tbt_p99_s", "preemptions", "cached_tokens", "prompt_tokens_computed",
        "rejected", "reject_reason"]
    iterations = metrics.iteration_table(result.iterations)
    steps = result.steps
    assert list(steps.columns) == ["iteration", *STEP_COLUMNS]
    assert len(steps) == len(iterations)
    # Back-to-back or idle, never overlapping; the steps table agrees with the iteration rows.
    assert np.all(iterations["start_s"].to_numpy()[1:] >= iterations["end_s"].to_numpy()[:-1] - 1e-12)
    assert np.allclose(steps["duration_s"], iterations["duration_s"])
    host_parts = steps[["schedule_s", "prepare_s", "launch_s", "sync_s", "apply_s"]].sum(axis=1)
    assert np.all(host_parts <= steps["duration_s"] + 1e-9)
    # The compositions hold exactly the tokens of each iteration.
    comp = result.compositions
    per_iteration = comp.groupby("iteration")["num_tokens"].sum().to_numpy()
    assert np.array_equal(per_iteration, steps["num_prefill_tokens"] + steps["num_decode_tokens"])
    # Every request computes its prompt once (plus recomputation after a preemption) and each output
    # token but the last one once more as a decode.
    computed = comp.groupby("request_id")["num_tokens"].sum().reindex(range(len(requests)), fill_value=0)
    recomputed = computed.to_numpy() - (requests.prompt_tokens + requests.output_tokens - 1)
    assert np.all(recomputed >= 0)
    assert np.all((recomputed > 0) <= (requests.preemptions > 0))


def test_batches_obey_each_policy(executed):
    steps = {p: executed[p][1].steps for p, _ in POLICY_CASES}
    comps = {p: executed[p][1].compositions for p, _ in POLICY_CASES}
    # Sarathi: at most chunk_size tokens per iteration; Orca: at most max_batch_size requests.
    assert (steps["sarathi"]["num_prefill_tokens"] + steps["sarathi"]["num_decode_tokens"]).max() <= 32
    assert steps["orca"]["batch_size"].max() <= 3
    # vLLM (no chunked prefill): an iteration is all prefill or all decode, and prefills are whole prompts
    # (or whole recomputations).
    v = steps["vllm"]
    assert not ((v["num_prefill_tokens"] > 0) & (v["num_decode_tokens"] > 0)).any()
    requests = executed["vllm"][0]
    prefill_rows = comps["vllm"][comps["vllm"]["num_tokens"] > 1]
    assert (prefill_rows["kv_tokens"] == 0).all()
    assert executed["vllm"][0].preemptions.sum() > 0  # the tight cache preempted someone
    assert np.all(prefill_rows["num_tokens"].to_numpy() >= requests.prompt_tokens[prefill_rows["request_id"]])


@pytest.mark.parametrize("policy", [p for p, _ in POLICY_CASES])
def test_replaying_the_measured_times_reproduces_every_batch(executed, policy):
    """The policy chose each executed batch itself: serving again with the measured durations (no model)
    gives the very same sequence of batches."""
    _requests, result, _runner, params, kv_blocks, (arrivals, prompts, outputs) = executed[policy]
    replay = execute(RequestState.create(arrivals, prompts, outputs, 512),
                     functools.partial(POLICIES[policy], **params), ReplayRunner(result.steps["duration_s"]),
                     kv_blocks, block_size=8, kv_watermark=0.0)
    pd.testing.assert_frame_equal(replay.compositions, result.compositions)


def test_slot_cache_holds_real_keys_and_values():
    """A prompt computed in two chunks and then decoded gives the logits a single pass over the whole
    sequence gives (profiler.model's own back-to-back layout): the slot cache kept the K/V."""
    from profiler.model import make_step

    runner = TorchModelRunner(tiny_model(), "cpu", capacity_tokens=600)
    other = np.array([7])  # a neighbour occupying the first slot, so request 1's slot starts elsewhere
    runner.execute(other, np.array([20]), np.array([0]), np.array([20]), np.array([0]), np.array([50]))
    rid, prompt = np.array([1]), 37
    captured = {}

    def run(num_tokens, kv_tokens, generated):
        runner.execute(rid, np.array([num_tokens]), np.array([kv_tokens]), np.array([prompt]),
                       np.array([generated]), np.array([prompt + 5]))

    import simulator.execute.runner as runner_module
    forward = runner_module.forward

    def spy(shard, kv, ids, positions, write_index, last_index, attn):
        logits = forward(shard, kv, ids, positions, write_index, last_index, attn)
        captured["logits"], captured["ids"] = logits.clone(), ids.clone()  # sample() scales logits in place
        return logits

    runner_module.forward = spy
    try:
        run(20, 0, 0)
        first_ids = captured["ids"]
        run(17, 20, 0)  # the rest of the prompt: emits the first output token
        prompt_ids = torch.cat([first_ids, captured["ids"]])
        sampled = runner.last_token[1]
        run(1, 37, 1)  # decode: feeds back the token sampled after the prompt
        decode_logits, decode_id = captured["logits"], captured["ids"]
    finally:
        runner_module.forward = forward
    assert decode_id.tolist() == [sampled]
    assert runner.slot_start[1] != runner.slot_start[7]
    sequence = torch.cat([prompt_ids, decode_id])
    step = make_step(((len(sequence), 0),), "cpu")
    kv = runner.shard.new_kv_cache(len(sequence), fill_random=True)
    full = runner.shard.forward(sequence, step, kv)
    assert torch.allclose(decode_logits, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("engine", ["servesim_execute_piecewise", "sglang"])
def test_split_and_piecewise_launches_compute_what_the_fused_launch_computes(engine, monkeypatch):
    """The same batches (prefills, a mixed batch, decodes) through servesim's fused engine and through a
    split-attention engine (piecewise graph pieces, or eager) pick the same tokens and write the same K/V
    into each request's slot."""
    import simulator.execute.runner as runner_module
    from simulator.engine import load_engine_profile

    monkeypatch.setattr(runner_module, "sample", lambda logits, temperature: logits.argmax(-1))  # deterministic
    fused = TorchModelRunner(tiny_model(), "cpu", capacity_tokens=600)
    other = TorchModelRunner(tiny_model(), "cpu", capacity_tokens=600, engine=load_engine_profile(engine))
    assert other.split_attention and (other.pieces is not None) == (engine == "servesim_execute_piecewise")
    steps = [  # ids, new tokens, cached tokens, prompt, generated
        ([1], [20], [0], [37], [0]),
        ([1, 2], [17, 9], [20, 0], [37, 9], [0, 0]),          # chunk of 1 + whole prompt of 2
        ([3, 2, 1], [40, 1, 1], [0, 9, 37], [40, 9, 37], [0, 1, 1]),  # a prefill with two decodes
        ([2, 1, 3], [1, 1, 1], [10, 38, 40], [9, 37, 40], [2, 2, 1]),  # decodes only
    ]
    for ids, new, cached, prompt, generated in steps:
        args = [np.array(a) for a in (ids, new, cached, prompt, generated)] + [np.array(prompt) + 10]
        a, b = fused.execute(*args), other.execute(*args)
        assert {r: fused.last_token[r] for r in ids} == {r: other.last_token[r] for r in ids}
        assert b.path == ("piecewise" if other.pieces is not None else "eager") and a.path == "eager"
    assert fused.slot_start == other.slot_start
    written = {1: 39, 2: 11, 3: 41}  # tokens each request has in its slot after the last step
    for r, start in fused.slot_start.items():
        rows = slice(start, start + written[r])
        for layer in range(2):
            assert torch.allclose(fused.kv.k[layer][rows], other.kv.k[layer][rows], atol=1e-5)


def test_slot_attention_check_and_graph_shapes():
    runner = TorchModelRunner(tiny_model(), "cpu", capacity_tokens=100)
    assert runner.check_slot_attention() < 1e-4
    assert [graph_batch_size(n) for n in (1, 2, 3, 4, 5, 8, 9, 17, 256)] == [1, 2, 4, 4, 8, 8, 16, 24, 256]
    bounds = [graph_context_bound(k) for k in (1, 256, 257, 1000, 1024, 1025)]
    assert bounds == [256, 256, 512, 1024, 1024, 2048]


# --- slots --------------------------------------------------------------------------------------------


def test_slot_allocator_first_fit_and_merging():
    slots = SlotAllocator(100)
    a, b, c = slots.allocate(30), slots.allocate(30), slots.allocate(30)
    assert (a, b, c) == (0, 30, 60) and slots.used_tokens == 90
    with pytest.raises(SlotsFull):
        slots.allocate(20)
    slots.free(b, 30)
    assert slots.allocate(10) == 30  # first fit: the hole left by b
    slots.free(a, 30)
    slots.free(30, 10)  # merges with a's range: 0..40 free again
    assert slots.allocate(40) == 0
    slots.free(0, 40)
    slots.free(c, 30)
    assert slots.used_tokens == 0 and slots.allocate(100) == 0
    with pytest.raises(ValueError):
        slots.free(0, 100)
        slots.free(0, 100)


# --- from a config, and the command line -------------------------------------------------------------------


def tiny_config(policy=None, num_requests=6) -> SimulationConfig:
    return SimulationConfig.from_dict({
        "model": TINY, "hardware": "h100", "policy": policy or {"name": "sarathi", "chunk_size": 64},
        "workload": {"trace": "data/traces/splitwise_conv.csv", "arrival": "poisson", "rate_qps": 50.0,
                     "lengths": "trace", "num_requests": num_requests, "max_prompt_tokens": 120,
                     "max_output_tokens": 8},
        "predictor": "linear",
        "linear_predictor": {"fixed_s": 0.01, "per_prefill_token_s": 1e-4, "per_decode_token_s": 5e-4,
                             "per_kv_token_s": 1e-6},
    })


def test_cli_single_run_writes_the_simulator_files(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_dict(tiny_config())))
    out = tmp_path / "run"
    assert cli.main(["--config", str(config), "--out", str(out), "--device", "cpu",
                     "--kv-capacity-tokens", "4096"]) == 0
    for name in ("requests.parquet", "iterations.parquet", "token_times.parquet", "summary.json",
                 "steps.parquet", "compositions.parquet", "config.json", "execution.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 6 and summary["setup"]["clock"] == "busy"
    # The saved config is the one run, and reads back.
    assert SimulationConfig.from_dict(json.loads((out / "config.json").read_text())) == tiny_config()


def test_cli_plan_skips_cells_past_the_deadline_and_packs(tmp_path):
    config = config_dict(tiny_config(num_requests=4))
    cells = [{"name": "quick", "predicted_served_s": 0.1, "config": config},
             {"name": "too-long", "predicted_served_s": 1e6, "config": config}]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"cells": cells}))
    archive = tmp_path / "runs.tar.gz"
    assert cli.main(["--plan", str(plan), "--out", str(tmp_path / "runs"), "--device", "cpu",
                     "--kv-capacity-tokens", "4096", "--deadline-s", "300", "--pack", str(archive)]) == 0
    cells = json.loads((tmp_path / "runs" / "cells.json").read_text())
    assert cells == {"done": ["quick"], "skipped": ["too-long"], "failed": []}
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "runs/quick/steps.parquet" in names and "runs/environment.json" in names
    assert not (tmp_path / "runs" / "quick" / "trace.json").exists()


def test_run_execution_rejects_parallel_configs(tmp_path):
    cfg = tiny_config()
    cfg.cluster.tp = 2
    from simulator.config import ConfigError
    with pytest.raises(ConfigError, match="one replica on one GPU"):
        run_execution(cfg, PredictorRunner(linear_predictor()), tmp_path)


def test_a_run_past_its_time_limit_is_abandoned():
    from simulator.execute.loop import ExecutionTimeout

    arrivals, prompts, outputs = workload(30, seed=1)
    with pytest.raises(ExecutionTimeout, match="requests finished"):
        execute(RequestState.create(arrivals, prompts, outputs, 100_000), POLICIES["vllm"],
                PredictorRunner(linear_predictor()), 10_000, stop_at=0.0)


def test_plan_cells_record_the_engine_they_are_executed_as():
    """A fidelity plan's cells are simulated as the engine servesim-execute will run them as, and say so
    in their config (which the executor reads, and servesim-compare simulates)."""
    from simulator.execute import plan

    cfg = plan.base_config("llama-3-8b", "h100", "conversation", {"name": "vllm"})
    assert cfg.engine.name == "servesim_execute"
    piecewise = plan.base_config("llama-3-8b", "h100", "conversation", {"name": "vllm"},
                                 engine="servesim_execute_piecewise")
    assert config_dict(piecewise)["engine"]["attention_launch"] == "split"
    assert cli.with_engine(cfg, None, "h200").hardware.name == "h200"
