"""How much of the Mooncake conversation trace a prefix cache finds, against the trace's own reuse.

    python bench/prefix_hit_rate.py                      # the three parts below, the figure in docs/figures/
    python bench/prefix_hit_rate.py --parts curves --requests 1000 --figure ''

Parts:
  reuse      the trace's own reuse, counted from its hash_ids alone (no simulation): the share of full
             512-token blocks, and of prompt tokens, that repeat a block an earlier request had at the
             same position with the same prefix
  unbounded  the whole trace simulated with a KV cache too large to evict (GPU memory set to 20,000 GiB) and
             one request every 100 s (every earlier prefill has finished): the simulated hit rate, which
             should equal the reuse above (to within the blocks of 16 tokens that a partial 512-token
             block adds, and the last prompt token a cache never serves)
  speed      the whole trace at its own rate over --replicas replicas: simulated seconds and wall and CPU
             seconds of run_simulation (target: 10 s on one core)
  curves     the first --requests requests over --replicas H100 replicas (prefix_aware router): hit rate
             against KV capacity (the GPU memory for weights and KV scaled from half to 8x an
             H100's) at the trace's rate, and
             against the rate (replayed 0.25-4x as fast) at an H100's capacity

Llama-3.1-8B (128k context), policy=vllm_v1 (prefix caching on), engine vllm_v1. Not a test: numbers for
reading (docs/workload_and_metrics.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

MEMORY_SCALES = (0.5, 1, 2, 4, 8)
RATE_SCALES = (0.25, 0.5, 1, 2, 4)


def trace_reuse() -> tuple[float, float, int, int]:
    """(block share, token share, repeated blocks, full blocks) of the trace's own reuse."""
    from simulator.workload import load_workload_config, read_trace

    trace = read_trace(load_workload_config("mooncake_conversation").trace, "mooncake")
    seen: set[tuple] = set()
    repeated = full = repeated_tokens = 0
    for keys, prompt in zip(trace.content.keys, trace.prompt_tokens.tolist()):
        prefix: tuple = ()
        for i, key in enumerate(keys.tolist()):
            if (i + 1) * 512 > prompt:  # the partial last block
                break
            prefix = prefix + (key,)
            full += 1
            if prefix in seen:
                repeated += 1
                repeated_tokens += 512
            else:
                seen.add(prefix)
    return repeated / full, repeated_tokens / int(trace.prompt_tokens.sum()), repeated, full


def base_config(num_requests, replicas: int, rate_scale: float = 1.0, memory_scale: float = 1.0,
                router: str = "prefix_aware", **workload):
    """conf/workload/mooncake_conversation.yaml's trace on Llama-3.1-8B and vllm_v1, with these fields
    replaced (workload: more WorkloadConfig fields); memory_scale multiplies the GPU's memory."""
    from simulator.run import SimulationConfig
    from simulator.workload import load_workload_config

    cfg = SimulationConfig.from_dict({
        "model": "llama-3.1-8b", "hardware": "h100", "progress": False, "policy": {"name": "vllm_v1"},
        "cluster": {"num_replicas": replicas, "router": router},
    })
    trace = load_workload_config("mooncake_conversation", num_requests=num_requests, rate_scale=rate_scale,
                                 **workload)
    return dataclasses.replace(
        cfg, workload=trace,
        hardware=dataclasses.replace(cfg.hardware, memory_gib=cfg.hardware.memory_gib * memory_scale))


def hit_rate(cfg) -> tuple[float, dict]:
    from simulator.run import run_simulation

    summary = run_simulation(cfg).summary
    return summary["prefix_cache"]["hit_rate_tokens"], summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["reuse", "unbounded", "curves", "speed"],
                        choices=["reuse", "unbounded", "curves", "speed"])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--figure", default="docs/figures/prefix_hit_rate.png", help="'' for none")
    args = parser.parse_args()

    if "reuse" in args.parts:
        blocks, tokens, repeated, full = trace_reuse()
        print(f"trace reuse: {repeated:,} of {full:,} full 512-token blocks repeat ({blocks:.1%}), "
              f"{tokens:.1%} of prompt tokens")
    if "unbounded" in args.parts:
        started = time.perf_counter()
        cfg = base_config(None, 1, memory_scale=20000 / 79.65, arrival="fixed", rate_qps=0.01)
        rate, summary = hit_rate(cfg)
        print(f"unbounded cache, arrivals 100 s apart: hit rate {rate:.1%} of prompt tokens "
              f"({summary['prefix_cache']['evictions']:,} evictions, {summary['rejected']:,} rejected; "
              f"{time.perf_counter() - started:.0f} s)")
    if "speed" in args.parts:
        started, cpu_started = time.perf_counter(), time.process_time()
        rate, summary = hit_rate(base_config(None, args.replicas))
        print(f"whole trace ({summary['num_requests']:,} requests, {args.replicas} x h100, prefix_aware): "
              f"{summary['simulated_s']:,.0f} s simulated in {time.perf_counter() - started:.1f} s wall, "
              f"{time.process_time() - cpu_started:.1f} s CPU; hit rate {rate:.1%}")
    if "curves" in args.parts:
        by_memory = [(m, hit_rate(base_config(args.requests, args.replicas, memory_scale=m))[0])
                     for m in MEMORY_SCALES]
        by_rate = [(r, hit_rate(base_config(args.requests, args.replicas, rate_scale=r))[0]) for r in RATE_SCALES]
        print(f"first {args.requests:,} requests, {args.replicas} x h100, prefix_aware:")
        print("  GPU memory (x an H100's)  " + "  ".join(f"{m:>5g}" for m, _ in by_memory))
        print("  hit rate                  " + "  ".join(f"{h:>5.1%}" for _, h in by_memory))
        print("  rate (x the trace's)      " + "  ".join(f"{r:>5g}" for r, _ in by_rate))
        print("  hit rate                  " + "  ".join(f"{h:>5.1%}" for _, h in by_rate))
        if args.figure:
            print(f"figure: {curves_figure(by_memory, by_rate, args.figure)}")


def curves_figure(by_memory, by_rate, path: str) -> Path:
    import numpy as np

    from plots.common import new_figure, save_figure, style_axes

    fig, axes = new_figure(ncols=2, width_in=4.2, height_in=3.4)
    left, right = np.ravel(axes)
    left.plot([m for m, _ in by_memory], [100 * h for _, h in by_memory], marker="o")
    left.set_xscale("log", base=2)
    style_axes(left, "GPU memory for weights + KV (x an H100's)", "prompt tokens from cache (%)", "at the trace's rate")
    right.plot([r for r, _ in by_rate], [100 * h for _, h in by_rate], marker="o")
    right.set_xscale("log", base=2)
    style_axes(right, "arrival rate (x the trace's)", "prompt tokens from cache (%)", "at one H100's memory")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
