"""Capacity-search and sweep speed: prints a table.

    python bench/bench_capacity.py                 # both parts
    python bench/bench_capacity.py --only search   # one capacity search (target: <= 30 s on one core)
    python bench/bench_capacity.py --only sweep    # 100-configuration sweep (target: <= 15 min on 2 cores)

Part 1 searches the capacity of Llama-2-7B on one H100 (Sarathi-Serve, chunk 512) with the Azure
conversation trace, 2,048 requests per trial, in this process (one core).
Part 2 runs conf/sweep/bench100.yaml (100 configurations, a capacity search each) with a process pool
on every core, after timing a 10-point slice serially and in parallel for the speed-up.
The predictor is the fitted runtime model when H100 profiles are present, else the linear roofline
model (the table says which).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.experiments.capacity import compose_capacity_config, run_capacity_search
from simulator.experiments.sweep import capacity_point_runner, enumerate_points, load_space, run_sweep
from simulator.paths import CONF_DIR, PROFILES_DIR


def predictor_override() -> list[str]:
    """Use the fitted model when its H100 profiles exist; otherwise say so and use the roofline."""
    if (PROFILES_DIR / "h100" / "llama-2-7b").exists():
        return []
    return ["predictor=linear"]


def bench_search() -> list[tuple[str, str, str]]:
    overrides = ["model=llama-2-7b", "hardware=h100", "policy=sarathi", "policy.chunk_size=512",
                 "workload=conversation", "search.num_requests=2048", "search.write_capacity_run=false",
                 *predictor_override()]
    simulation, search = compose_capacity_config(overrides)
    from simulator.run import build_predictor

    build_predictor(simulation)  # fit or load the runtime model first: a one-off, cached on disk
    start, cpu_start = time.perf_counter(), time.process_time()
    record = run_capacity_search(simulation, search, progress=False)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    trials = len(record["trials"])
    return [
        ("capacity search: Llama-2-7B, 1x H100, conversation trace, 2,048 req/trial", f"{wall_s:.1f} s", "<= 30 s"),
        ("  CPU time of that search (one core)", f"{cpu_s:.1f} s", "(wall exceeds it when cores are shared)"),
        ("  trials / mean wall per trial", f"{trials} / {wall_s / trials:.2f} s", ""),
        ("  capacity found", f"{record['capacity_qps']:.3g} req/s ({record['status']})", ""),
        ("  predictor", type_of_predictor(overrides), ""),
    ]


def type_of_predictor(overrides: list[str]) -> str:
    return "linear roofline (no H100 profiles)" if "predictor=linear" in overrides else "fitted runtime model"


def _spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def machine_parallelism(workers: int) -> float:
    """Speed-up of `workers` processes over one on pure CPU work: what this machine can give at best
    (a VM's vCPUs may share fewer physical cores than they appear to)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    n = 15_000_000
    start = time.perf_counter()
    for _ in range(workers):
        _spin(n)
    serial_s = time.perf_counter() - start
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_spin, [1] * workers))  # start the workers before timing
        start = time.perf_counter()
        list(pool.map(_spin, [n] * workers))
        parallel_s = time.perf_counter() - start
    return serial_s / parallel_s


def bench_sweep(workers: int) -> list[tuple[str, str, str]]:
    space = load_space(CONF_DIR / "sweep" / "bench100.yaml")
    space.base += predictor_override()
    points = enumerate_points(space)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="servesim-bench-"))
    try:
        sample = points[:: max(1, len(points) // 10)][:10]
        start = time.perf_counter()
        run_sweep(sample, scratch / "serial", capacity_point_runner, executor="serial", progress=False)
        serial_s = time.perf_counter() - start
        start = time.perf_counter()
        run_sweep(sample, scratch / "parallel", capacity_point_runner, executor="local", workers=workers,
                  progress=False)
        parallel_s = time.perf_counter() - start
        rows += [("10-point slice, serial", f"{serial_s:.1f} s", ""),
                 (f"10-point slice, {workers} worker processes", f"{parallel_s:.1f} s",
                  f"speed-up {serial_s / parallel_s:.2f}x"),
                 (f"  pure-CPU speed-up of {workers} processes on this machine",
                  f"{machine_parallelism(workers):.2f}x", "the ceiling for the line above")]
        start = time.perf_counter()
        outcome = run_sweep(points, scratch / "full", capacity_point_runner, executor="local", workers=workers,
                            progress=True)
        full_s = time.perf_counter() - start
        trials = int(outcome.table["num_trials"].sum()) if "num_trials" in outcome.table else 0
        rows += [(f"sweep of {len(points)} configurations ({workers} workers)", f"{full_s / 60:.1f} min", "<= 15 min"),
                 ("  trials simulated / failed points", f"{trials} / {outcome.failed}", "")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["search", "sweep"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rows = []
    if args.only in (None, "search"):
        rows += bench_search()
    if args.only in (None, "sweep"):
        rows += bench_sweep(args.workers)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'measured':>28}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>28}  {target}")
    print(f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
