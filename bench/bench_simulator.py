"""Simulator speed and memory benchmark: prints a table (not a test; targets are for reading, not asserting).

    python bench/bench_simulator.py                  # conversation trace (19,366 requests), vLLM and Sarathi
    python bench/bench_simulator.py --predictor fitted           # the fitted runtime model (data/profiles/)
    python bench/bench_simulator.py --predictor fitted --engine servesim_execute   # priced as another engine
    python bench/bench_simulator.py --synthetic 1000000 --policies sarathi   # memory at 1M requests
    python bench/bench_simulator.py --slow           # also step one iteration at a time (no decode runs)
    python bench/bench_simulator.py --repeat 3       # best of 3 runs each (a shared machine's noise)

Each configuration runs in a fresh Python process so that its wall time includes interpreter start-up and
imports, and its peak memory (max RSS) is its own. Columns:
  wall_s      the whole process, start-up included (target: <= 2 s for the conversation trace)
  cpu_s       user + system CPU seconds of that process (less sensitive than wall_s to a busy machine)
  sim_s       run_simulation alone: load the workload, simulate, summarise (per-token TBT included)
  req/s       requests simulated per wall second;  iter/s  iterations simulated per sim second
  peak_MiB    the process's max resident memory
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """Run one configuration and print its measurements as JSON (called in a fresh process)."""
    started = time.perf_counter()
    from simulator.run import SimulationConfig, run_simulation

    if args.synthetic:
        # Uniform lengths (64..1024 tokens in all, 4:1 prompt:output: 109 output tokens on average) with
        # Poisson arrivals at --rate per replica, which one H100 keeps up with, so the queue stays bounded
        # and memory measures the records.
        workload = {"trace": None, "arrival": "poisson", "rate_qps": args.rate * args.replicas,
                    "lengths": "uniform", "min_tokens": 64, "max_tokens": 1024,
                    "num_requests": args.synthetic}
    else:
        workload = {"trace": "data/traces/splitwise_conv.csv", "arrival": "trace", "lengths": "trace"}
    cfg = SimulationConfig.from_dict({
        "model": args.model, "hardware": "h100", "predictor": args.predictor, "workload": workload,
        "policy": {"name": args.policy}, "engine": args.engine,
        "cluster": {"num_replicas": args.replicas, "router": "least_outstanding_requests"},
        "fast_decode_runs": not args.no_fast_path,
    })
    imported = time.perf_counter()
    result = run_simulation(cfg)
    done = time.perf_counter()
    s = result.summary
    print(json.dumps({
        "imports_s": imported - started, "sim_s": done - imported, "requests": s["num_requests"],
        "iterations": s["num_iterations"], "tokens": s["output_tokens_completed"],
        "preemptions": s["preemptions"], "predictor": s["setup"]["predictor"],
        "tbt_p99_ms": (s["tbt_s"]["p99"] or 0) * 1e3,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def run_child(args: argparse.Namespace, policy: str, fast: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--policy", policy, "--model", args.model, "--engine", args.engine,
           "--predictor", args.predictor, "--synthetic", str(args.synthetic),
           "--replicas", str(args.replicas), "--rate", str(args.rate)] + ([] if fast else ["--no-fast-path"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        print(f"{policy}: failed\n{done.stderr}")
        return None
    m = json.loads(done.stdout.strip().splitlines()[-1])
    m["wall_s"] = wall_s
    m["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="vllm,sarathi")
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--predictor", default="linear", choices=("linear", "fitted"))
    parser.add_argument("--engine", default="vllm_v1", help="conf/engine profile the fitted predictor prices with")
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic requests instead of the trace")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="synthetic arrivals per second per replica")
    parser.add_argument("--slow", action="store_true", help="also run without the decode-run fast path")
    parser.add_argument("--repeat", type=int, default=1, help="run each configuration N times, report the fastest")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--no-fast-path", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    workload = f"synthetic {args.synthetic:,}" if args.synthetic else "conversation trace"
    print(f"servesim simulator benchmark: {args.model}, {args.replicas} x h100, {workload}, "
          f"predictor {args.predictor}")
    header = (f"{'policy':<9}{'fast':>5}{'wall_s':>8}{'cpu_s':>7}{'sim_s':>7}{'requests':>11}{'req/s':>7}"
              f"{'iterations':>12}{'iter/s':>9}{'tokens':>13}{'preempt':>8}{'TBT p99 ms':>11}{'peak_MiB':>9}")
    print(header)
    print("-" * len(header))
    predictors, failed = set(), 0
    for policy in args.policies.split(","):
        for fast in [True, False] if args.slow else [True]:
            runs = [run_child(args, policy, fast) for _ in range(max(args.repeat, 1))]
            if None in runs:
                failed += 1
                continue
            m = min(runs, key=lambda run: run["wall_s"])
            print(f"{policy:<9}{'yes' if fast else 'no':>5}{m['wall_s']:>8.2f}{m['cpu_s']:>7.2f}"
                  f"{m['sim_s']:>7.2f}{m['requests']:>11,}{m['requests'] / m['wall_s']:>7,.0f}"
                  f"{m['iterations']:>12,}"
                  f"{m['iterations'] / m['sim_s']:>9,.0f}{m['tokens']:>13,}{m['preemptions']:>8,}"
                  f"{m['tbt_p99_ms']:>11.1f}{m['peak_mib']:>9,.0f}")
            predictors.add(m["predictor"])
    if predictors:
        print(f"(predictor: {', '.join(sorted(predictors))}; wall_s and cpu_s include interpreter start-up and "
              f"imports{f'; fastest of {args.repeat} runs' if args.repeat > 1 else ''})")
    if failed:
        sys.exit(f"{failed} configuration(s) failed (their errors are above)")


if __name__ == "__main__":
    main()
