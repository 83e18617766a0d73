"""Prefix caching on a workload with shared prompts: what it saves and what it costs the simulator.

    python bench/bench_prefix_cache.py                 # conversation trace, 8 system prompts of 1024 tokens
    python bench/bench_prefix_cache.py --system-prompts 64 --system-tokens 2048 --rate-scale 2

The conversation trace's arrivals and lengths, with made-up content (the trace has none): each request's
prompt starts with one of --system-prompts texts (chosen at random) for up to --system-tokens tokens, then
text of its own. Llama-3-8B on one H100, the fitted runtime model. Columns: hit (cached / prompt tokens
of served requests), evictions (KV blocks), TTFT mean and p99, TBT p99 (ms), sim_s (simulate alone, s).
Not a test: numbers for reading.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

POLICIES = [("vllm_v1", {"enable_prefix_caching": False}), ("vllm_v1", {}),
            ("sglang", {"enable_prefix_caching": False}), ("sglang", {}), ("sglang", {"schedule_policy": "lpm"}),
            ("sarathi", {"chunk_size": 2048}), ("sarathi", {"chunk_size": 2048, "enable_prefix_caching": True})]


def shared_system_prompts(prompts: np.ndarray, outputs: np.ndarray, num_texts: int, text_tokens: int,
                          unit_tokens: int, seed: int):
    from simulator.content import TokenContent

    rng = np.random.default_rng(seed)
    keys = []
    for i, (prompt, total) in enumerate(zip(prompts.tolist(), (prompts + outputs).tolist())):
        shared = min(prompt, text_tokens) // unit_tokens
        text = int(rng.integers(num_texts))
        own = -(-total // unit_tokens) - shared
        keys.append(np.concatenate([np.arange(shared) + (text + 1) * 10**9, np.arange(own) + (i + 1) * 10**5]))
    return TokenContent(unit_tokens, keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system-prompts", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=1024)
    parser.add_argument("--rate-scale", type=float, default=1.0)
    args = parser.parse_args()

    from simulator import metrics, parts
    from simulator.cluster import simulate
    from simulator.config import PolicyConfig
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState
    from simulator.run import SimulationConfig
    from simulator.workload import load_workload

    cfg = SimulationConfig.from_dict({"model": "llama-3-8b", "hardware": "h100", "progress": False,
                                      "workload": {"name": "conversation", "rate_scale": args.rate_scale}})
    workload = load_workload(cfg.workload, cfg.seed)
    content = shared_system_prompts(workload.prompt_tokens, workload.output_tokens, args.system_prompts,
                                    args.system_tokens, 16, cfg.seed)
    predictor = parts.build_predictor(cfg)
    blocks = kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster)
    print(f"{len(workload):,} requests, {args.system_prompts} system prompts of up to {args.system_tokens} tokens")
    print(f"{'policy':<44} {'hit':>6} {'evictions':>9} {'TTFT':>7} {'p99':>7} {'TBT p99':>8} {'sim_s':>6}")
    for name, params in POLICIES:
        requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                       cfg.model.max_model_len, content=content)
        policy = PolicyConfig(name=name, params=dict(params))
        started = time.perf_counter()
        out = simulate(requests, parts.policy_factory(policy, cfg.model.max_model_len, cfg.hardware, cfg.engine), predictor,
                       blocks, block_size=cfg.cluster.block_size)
        sim_s = time.perf_counter() - started
        s = metrics.summarize(out.records, out.iterations, out.simulated_s, sim_s)
        label = name + (" " + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        print(f"{label:<44} {s['prefix_cache']['hit_rate_tokens']:>6.1%} {out.prefix_cache['evictions']:>9,} "
              f"{s['ttft_s']['mean'] * 1e3:>7.1f} {s['ttft_s']['p99'] * 1e3:>7.1f} {s['tbt_s']['p99'] * 1e3:>8.1f} "
              f"{sim_s:>6.2f}")


if __name__ == "__main__":
    main()
