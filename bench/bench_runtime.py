"""Benchmark of the fitted runtime model: fit time, per-iteration prediction cost, decode-run cost.

    python bench/bench_runtime.py                       # every model profiled on h100
    python bench/bench_runtime.py --models llama-3-8b --hardware h100 --iterations 20000

Two measurements of the prediction cost:
* standalone: `stage_times_s` on the batch stream a Sarathi-Serve-like scheduler (chunked prefills
  under a 512-token budget, up to 128 running sequences) produces on the splitwise conversation trace's
  prompt and output lengths (nearly every batch carries a prefill chunk: the hardest case);
* inside a simulation: the whole conversation trace (19,366 requests, one replica of the smallest
  tensor-parallel degree the model fits in, vLLM and Sarathi policies) simulated with the fitted predictor, every predictor call timed; the cost per simulated
  iteration is the predictor's total time over all iterations, the decode-run steps included.
Targets (issue 4): fit <= 30 s per model and GPU on this 2-core machine; <= 20 us per prediction
(per simulated iteration, on average).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.schema import OPS_CSV, table_path
from simulator.config import load_hardware_config, load_model_config
from simulator.paths import PROFILES_DIR, TRACES_DIR
from simulator.runtime import build_predictor


def batch_stream(num_iterations: int, token_budget: int = 512, max_seqs: int = 128, seed: int = 0):
    """(q_tokens, kv_tokens) arrays of successive iterations of a chunked-prefill scheduler."""
    trace = pd.read_csv(TRACES_DIR / "splitwise_conv.csv")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(trace), size=num_iterations * 2)
    prompts = trace["num_prefill_tokens"].to_numpy()[picks]
    outputs = np.maximum(trace["num_decode_tokens"].to_numpy()[picks], 1)
    running: list[list[int]] = []  # [prompt_left, cached, outputs_left]
    next_request = 0
    batches = []
    while len(batches) < num_iterations:
        while len(running) < max_seqs and next_request < len(prompts):
            running.append([int(prompts[next_request]), 0, int(outputs[next_request])])
            next_request += 1
        budget = token_budget
        q, kv = [], []
        for seq in running:  # decodes first, then chunks of prefills while the budget lasts
            if seq[0] == 0 and budget > 0:
                q.append(1), kv.append(seq[1])
                budget -= 1
        for seq in running:
            if seq[0] > 0 and budget > 0:
                chunk = min(seq[0], budget)
                q.append(chunk), kv.append(seq[1])
                budget -= chunk
        batches.append((np.array(q, dtype=np.int64), np.array(kv, dtype=np.int64)))
        for seq in running:  # apply the iteration
            if seq[0] == 0:
                seq[1] += 1
                seq[2] -= 1
        budget = token_budget - sum(1 for s in running if s[0] == 0)
        for seq in running:
            if seq[0] > 0 and budget > 0:
                chunk = min(seq[0], budget)
                seq[0] -= chunk
                seq[1] += chunk
                budget -= chunk
        running = [s for s in running if s[2] > 0]
    return batches


class TimedPredictor:
    """Wraps a predictor, adding up the time spent in its calls and the iterations they cover."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.num_stages = predictor.num_stages
        self.seconds = 0.0
        self.iterations = 0

    def stage_times_s(self, q_tokens, kv_tokens):
        start = time.perf_counter()
        out = self.predictor.stage_times_s(q_tokens, kv_tokens)
        self.seconds += time.perf_counter() - start
        self.iterations += 1
        return out

    def decode_run_stage_times_s(self, kv_tokens, num_steps):
        start = time.perf_counter()
        out = self.predictor.decode_run_stage_times_s(kv_tokens, num_steps)
        self.seconds += time.perf_counter() - start
        self.iterations += num_steps
        return out


def in_simulation(model_name: str, hardware_name: str, policy: str) -> dict:
    """Predictor microseconds per simulated iteration over the conversation trace (see the docstring)."""
    from simulator.cluster import simulate
    from simulator.config import ConfigError
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState
    from simulator.run import SimulationConfig, policy_factory
    from simulator.run import build_predictor as build_for_config
    from simulator.workload import load_workload

    for tp in (1, 2, 4, 8):  # the smallest tensor-parallel degree the model fits in
        cfg = SimulationConfig.from_dict({
            "model": model_name, "hardware": hardware_name, "predictor": "fitted", "policy": {"name": policy},
            "cluster": {"tp": tp},
            "workload": {"trace": "data/traces/splitwise_conv.csv", "arrival": "trace", "lengths": "trace"}})
        try:
            num_blocks = kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster)
            break
        except ConfigError as error:
            too_big = error
    else:
        raise too_big  # not even on 8 GPUs
    timed = TimedPredictor(build_for_config(cfg))
    workload = load_workload(cfg.workload, cfg.seed)
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len)
    start = time.perf_counter()
    out = simulate(requests, policy_factory(cfg.policy), timed, num_blocks, block_size=cfg.cluster.block_size,
                   seed=cfg.seed)
    simulate_s = time.perf_counter() - start
    # A decode run interrupted by an arrival predicts steps that are never simulated: count what ran.
    iterations = len(out.iterations)
    return {"policy": policy, "tp": tp, "iterations": iterations, "predicted_steps": timed.iterations,
            "predictor_s": timed.seconds, "simulate_s": simulate_s,
            "us_per_iteration": timed.seconds / max(iterations, 1) * 1e6}


def bench(model_name: str, hardware_name: str, iterations: int) -> dict:
    model, hardware = load_model_config(model_name), load_hardware_config(hardware_name)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        predictor = build_predictor(model, hardware, 1, 1, cache_directory=Path(cache))
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        build_predictor(model, hardware, 1, 1, cache_directory=Path(cache))
        load_s = time.perf_counter() - start
    batches = batch_stream(iterations)
    for q, kv in batches[:200]:  # warm-up
        predictor.stage_times_s(q, kv)
    start = time.perf_counter()
    for q, kv in batches:
        predictor.stage_times_s(q, kv)
    per_call_us = (time.perf_counter() - start) / len(batches) * 1e6
    decode_only = sum(1 for q, _ in batches if len(q) == q.sum())
    kv = np.random.default_rng(1).integers(100, 3000, size=128)
    runs = {}
    for steps in (16, 256):
        reps = max(1, 4000 // steps)
        start = time.perf_counter()
        for _ in range(reps):
            predictor.decode_run_stage_times_s(kv, steps)
        runs[steps] = (time.perf_counter() - start) / (reps * steps) * 1e6
    return {"model": model_name, "hardware": hardware_name, "fit_s": fit_s, "cached_load_s": load_s,
            "stage_times_us": per_call_us, "decode_only_share": decode_only / len(batches),
            "attention_family": " / ".join(predictor.fitted.chosen.get(f"attention_{kind}", predictor.fitted.chosen["attention"])
                                           for kind in ("decode", "chunk")),
            "decode_run_16_us_per_step": runs[16], "decode_run_256_us_per_step": runs[256]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--policies", default="vllm,sarathi", help="policies of the in-simulation run ('' = skip)")
    args = parser.parse_args()
    gpu_dir = PROFILES_DIR / load_hardware_config(args.hardware).profile
    models = args.models or sorted(p.name for p in gpu_dir.glob("*") if table_path(p, OPS_CSV).exists())
    if not models:
        print(f"no profiles under {gpu_dir}: run the profiler first (docs/profiler.md)")
        return 1
    rows = [bench(m, args.hardware, args.iterations) for m in models]
    print(f"{'model':<12} {'hw':<5} {'fit s':>6} {'load s':>7} {'us/iteration':>13} {'decode share':>13} "
          f"{'us/step run16':>14} {'us/step run256':>15}  attention family (decode-only / with a chunk)")
    for r in rows:
        print(f"{r['model']:<12} {r['hardware']:<5} {r['fit_s']:6.1f} {r['cached_load_s']:7.2f} "
              f"{r['stage_times_us']:13.1f} {r['decode_only_share']:13.2f} {r['decode_run_16_us_per_step']:14.2f} "
              f"{r['decode_run_256_us_per_step']:15.2f}  {r['attention_family']}")
    policies = [p for p in args.policies.split(",") if p]
    if policies:
        print(f"\ninside a simulation (conversation trace, one {args.hardware} replica of tp GPUs, fitted predictor):")
        print(f"{'model':<12} {'tp':>2} {'policy':<8} {'iterations':>11} {'predicted':>11} {'predictor s':>12} {'simulate s':>11} "
              f"{'us/iteration':>13}")
        for m in models:
            for policy in policies:
                r = in_simulation(m, args.hardware, policy)
                print(f"{m:<12} {r['tp']:>2} {policy:<8} {r['iterations']:>11,} {r['predicted_steps']:>11,} {r['predictor_s']:12.2f} {r['simulate_s']:11.2f} "
                      f"{r['us_per_iteration']:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
