"""Scale benchmark: runs of 100k, 300k and 1M requests through the CLI's path, result files included.

    python bench/bench_scale.py                          # 100k, 300k, 1M requests, linear predictor
    python bench/bench_scale.py --sizes 100000 --predictor fitted
    python bench/bench_scale.py --policy vllm --replicas 32

The run is what `servesim` does with `model=llama-3-8b policy=sarathi workload=conversation_poisson
workload.num_requests=N cluster.num_replicas=R workload.rate_qps=...`: the conversation trace's lengths
(median prompt 1,020 tokens, mean output 211) with Poisson arrivals at --rate per replica, which one H100
keeps up with, so queues stay bounded and memory measures the records and the result files. It calls
run_simulation with an output directory, as the CLI does, so requests/iterations/token_times.parquet
and summary.json are written.

Each size runs in a fresh Python process, so that its peak memory is its own. Columns:
  requests    simulated requests;  iterations  simulated iterations (stage 0);  tokens  output tokens
  wall_s      run_simulation, result files included (the process's start-up and imports excluded)
  cpu_s       user + system CPU seconds of the same (less sensitive than wall_s to a busy machine)
  write_s     writing the result files (part of wall_s)
  sim_MiB     peak resident memory up to the end of the simulation (the recorder's buffers)
  peak_MiB    peak resident memory of the whole process (the target: under 4 GB at 1M requests)
  files_MiB   requests + iterations + token_times parquet and summary.json together
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    """The process's peak resident memory since it started, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(args: argparse.Namespace) -> None:
    """Run one size and print its measurements as JSON (called in a fresh process)."""
    from simulator import cluster, metrics
    from simulator.run import SimulationConfig, run_simulation

    phases: dict[str, float] = {}
    simulate, write_outputs = cluster.simulate, metrics.write_outputs

    def timed_simulate(*a, **kw):
        out = simulate(*a, **kw)
        phases["sim_mib"] = _peak_rss_mib()
        return out

    def timed_write(*a, **kw):
        started = time.perf_counter()
        paths = write_outputs(*a, **kw)
        phases["write_s"] = time.perf_counter() - started
        return paths

    # The colocated cluster kind imports simulate from simulator.cluster and result files go through
    # metrics.write_outputs, both looked up when called: wrapping them times the phases of the same run.
    cluster.simulate, metrics.write_outputs = timed_simulate, timed_write
    cfg = SimulationConfig.from_dict({
        "model": "llama-3-8b", "hardware": "h100", "predictor": args.predictor, "engine": "vllm_v1",
        "policy": {"name": args.policy},
        "workload": {"name": "conversation_poisson", "trace": "data/traces/splitwise_conv.csv",
                     "arrival": "poisson", "lengths": "trace", "rate_qps": args.rate * args.replicas,
                     "num_requests": args.size},
        "cluster": {"num_replicas": args.replicas, "router": "least_outstanding_requests"},
    })
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as out_dir:
        started, cpu_started = time.perf_counter(), _cpu_s()
        result = run_simulation(cfg, out_dir=out_dir)
        wall_s, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_started
        files_bytes = sum(p.stat().st_size for p in Path(out_dir).iterdir())
    s = result.summary
    print(json.dumps({
        "requests": s["num_requests"], "completed": s["completed"], "iterations": s["num_iterations"],
        "tokens": s["output_tokens_completed"], "wall_s": wall_s, "cpu_s": cpu_s, "write_s": phases.get("write_s", 0.0),
        "sim_mib": phases.get("sim_mib", 0.0), "peak_mib": _peak_rss_mib(), "files_mib": files_bytes / 2**20,
        "ttft_p99_ms": (s["ttft_s"]["p99"] or 0) * 1e3, "tbt_p99_ms": (s["tbt_s"]["p99"] or 0) * 1e3,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000,1000000", help="request counts, comma-separated")
    parser.add_argument("--policy", default="sarathi")
    parser.add_argument("--predictor", default="linear", choices=("linear", "fitted"))
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--rate", type=float, default=5.0, help="Poisson arrivals per second per replica")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"servesim scale benchmark: llama-3-8b, {args.replicas} x h100, {args.policy}, conversation lengths, "
          f"Poisson {args.rate * args.replicas:g} req/s, predictor {args.predictor}, result files written")
    header = (f"{'requests':>10}{'iterations':>12}{'tokens':>13}{'wall_s':>8}{'cpu_s':>8}{'write_s':>8}"
              f"{'sim_MiB':>9}{'peak_MiB':>9}{'files_MiB':>10}{'TTFT p99 ms':>12}{'TBT p99 ms':>11}")
    print(header)
    print("-" * len(header))
    failed = 0
    for size in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", "--size", str(size), "--policy", args.policy,
               "--predictor", args.predictor, "--replicas", str(args.replicas), "--rate", str(args.rate)]
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{size:>10,}  failed (exit {done.returncode})\n{done.stderr[-2000:]}")
            failed += 1
            continue
        m = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{m['requests']:>10,}{m['iterations']:>12,}{m['tokens']:>13,}{m['wall_s']:>8.1f}{m['cpu_s']:>8.1f}"
              f"{m['write_s']:>8.1f}"
              f"{m['sim_mib']:>9,.0f}{m['peak_mib']:>9,.0f}{m['files_mib']:>10,.1f}{m['ttft_p99_ms']:>12.1f}"
              f"{m['tbt_p99_ms']:>11.1f}", flush=True)
    if failed:
        sys.exit(f"{failed} size(s) failed (their errors are above)")


if __name__ == "__main__":
    main()
