"""Simulator speed and memory benchmark: prints a table (not a test; targets are for reading, not asserting).

    python bench/bench_simulator.py                     # conversation trace (19,366 requests), vLLM and Sarathi
    python bench/bench_simulator.py --predictor fitted  # with the fitted runtime model (needs data/profiles/)
    python bench/bench_simulator.py --synthetic 1000000 --policies sarathi   # memory at 1M requests
    python bench/bench_simulator.py --slow              # also step one iteration at a time (no decode runs)

Each configuration runs in a fresh Python process so that its wall time includes interpreter start-up and
imports, and its peak memory (max RSS) is its own. Columns:
  wall_s      the whole process, start-up included (target: <= 2 s for the conversation trace)
  simulate_s  run_simulation alone (loading the workload, simulating, summarising incl. per-token TBT)
  req/s       requests simulated per wall second;  iter/s  iterations simulated per simulate second
  peak_MiB    the process's max resident memory
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """Run one configuration and print its measurements as JSON (called in a fresh process)."""
    started = time.perf_counter()
    import resource

    from simulator.run import SimulationConfig, run_simulation

    if args.synthetic:
        # Uniform lengths (64..1024 tokens in all, 4:1 prompt:output: mean 109 output tokens) with Poisson
        # arrivals at --rate per replica, which one H100 keeps up with under the roofline predictor, so the
        # queue stays bounded and memory measures the records.
        workload = {"trace": None, "arrival": "poisson", "rate_qps": args.rate * args.replicas, "lengths": "uniform",
                    "min_tokens": 64, "max_tokens": 1024, "num_requests": args.synthetic}
    else:
        workload = {"trace": "data/traces/splitwise_conv.csv", "arrival": "trace", "lengths": "trace"}
    cfg = SimulationConfig.from_dict({
        "model": args.model, "hardware": "h100", "predictor": args.predictor, "workload": workload,
        "policy": {"name": args.policy}, "cluster": {"num_replicas": args.replicas,
                                                      "router": "least_outstanding_requests"},
        "fast_decode_runs": not args.no_fast_path,
    })
    imported = time.perf_counter()
    result = run_simulation(cfg)
    done = time.perf_counter()
    s = result.summary
    print(json.dumps({
        "imports_s": imported - started, "simulate_s": done - imported, "requests": s["num_requests"],
        "completed": s["completed"], "rejected": s["rejected"], "iterations": s["num_iterations"],
        "tokens": s["output_tokens_completed"], "simulated_s": s["simulated_s"], "preemptions": s["preemptions"],
        "predictor": s["setup"]["predictor"], "tbt_p99_ms": (s["tbt_s"]["p99"] or 0) * 1e3,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="vllm,sarathi")
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--predictor", default="linear", choices=("linear", "fitted"))
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic requests instead of the trace")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="synthetic arrivals per second per replica")
    parser.add_argument("--slow", action="store_true", help="also run without the decode-run fast path")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--no-fast-path", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    workload = f"synthetic {args.synthetic:,}" if args.synthetic else "conversation trace"
    print(f"servesim simulator benchmark: {args.model}, {args.replicas} x h100, {workload}, predictor {args.predictor}")
    header = (f"{'policy':<10}{'fast':>6}{'wall_s':>9}{'simulate_s':>12}{'requests':>10}{'req/s':>9}"
              f"{'iterations':>12}{'iter/s':>11}{'tokens':>13}{'preempt':>9}{'TBT p99 ms':>12}{'peak_MiB':>10}")
    print(header)
    print("-" * len(header))
    for policy in args.policies.split(","):
        for fast in ([True, False] if args.slow else [True]):
            cmd = [sys.executable, __file__, "--child", "--policy", policy, "--model", args.model,
                   "--predictor", args.predictor, "--synthetic", str(args.synthetic), "--replicas", str(args.replicas),
                   "--rate", str(args.rate)]
            if not fast:
                cmd.append("--no-fast-path")
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
            wall_s = time.perf_counter() - started
            if done.returncode != 0:
                print(f"{policy:<10} failed:\n{done.stderr}")
                continue
            m = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{policy:<10}{'yes' if fast else 'no':>6}{wall_s:>9.2f}{m['simulate_s']:>12.2f}{m['requests']:>10,}"
                  f"{m['requests'] / wall_s:>9,.0f}{m['iterations']:>12,}{m['iterations'] / m['simulate_s']:>11,.0f}"
                  f"{m['tokens']:>13,}{m['preemptions']:>9,}{m['tbt_p99_ms']:>12.1f}{m['peak_mib']:>10,.0f}")
    print(f"(predictor used: {m['predictor'] if 'm' in locals() else '?'}; wall_s includes interpreter start-up and imports)")


if __name__ == "__main__":
    main()
