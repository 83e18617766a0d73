"""Routing with prefix caches: round-robin, least outstanding tokens and prefix-aware, side by side.

    python bench/prefix_routing.py                                  # the table and docs/figures/prefix_routing.png
    python bench/prefix_routing.py --requests 1000 --replicas 4 --figure ''   # quicker, no figure

Llama-3.1-8B (128k context) on H100s, vLLM V1's scheduler with prefix caching (policy=vllm_v1, engine
vllm_v1), the first --requests requests of the Mooncake conversation trace at its own rate, --replicas
replicas of one GPU. For each router: the share of served prompt tokens found in a replica's cache, KV
blocks evicted, TTFT mean / p50 / p99 and TBT p99. The figure puts the TTFT distributions side by side
with each router's hit rate in its legend. Not a test: numbers for reading (docs/workload_and_metrics.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROUTERS = ("round_robin", "least_outstanding_tokens", "prefix_aware")


def simulate_router(router: str, num_requests: int, replicas: int):
    from prefix_hit_rate import base_config  # the same configuration (bench/ is on the path when run)

    from simulator.run import run_simulation

    return run_simulation(base_config(num_requests, replicas, router=router))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--figure", default="docs/figures/prefix_routing.png", help="'' for none")
    args = parser.parse_args()

    print(f"Mooncake conversation, first {args.requests:,} requests; llama-3.1-8b, vllm_v1 with prefix "
          f"caching, {args.replicas} x h100")
    print(f"{'router':<26} {'hit':>6} {'evicted':>10} {'TTFT mean':>10} {'p50':>8} {'p99':>8} {'TBT p99':>8}  (ms)")
    ttfts = {}
    for router in ROUTERS:
        result = simulate_router(router, args.requests, args.replicas)
        s = result.summary
        ttfts[router] = (result.requests["ttft_s"].dropna().to_numpy(), s["prefix_cache"]["hit_rate_tokens"])
        print(f"{router:<26} {s['prefix_cache']['hit_rate_tokens']:>6.1%} {s['prefix_cache']['evictions']:>10,} "
              f"{s['ttft_s']['mean'] * 1e3:>10.0f} {s['ttft_s']['p50'] * 1e3:>8.0f} {s['ttft_s']['p99'] * 1e3:>8.0f} "
              f"{s['tbt_s']['p99'] * 1e3:>8.1f}")
    if args.figure:
        print(f"figure: {ttft_figure(ttfts, args.figure)}")


def ttft_figure(ttfts: dict, path: str) -> Path:
    from plots.common import new_figure, save_figure, style_axes
    from plots.latency_cdf import empirical_cdf

    fig, axes = new_figure(width_in=6.0, height_in=3.8)
    ax = np.ravel(axes)[0]
    for router, (values, hit) in ttfts.items():
        x, y = empirical_cdf(np.asarray(values))
        ax.plot(x, y, label=f"{router} (cache hit {hit:.1%})")
    ax.set_xscale("log")
    style_axes(ax, "TTFT (s)", "fraction of requests", "Routing with prefix caches (Mooncake conversation)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
