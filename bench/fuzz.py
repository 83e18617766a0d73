"""Fuzz the simulator: many generated scenarios, each checked against every invariant (not a test).

    python bench/fuzz.py                     # 10,000 scenarios from seed 0, on every core
    python bench/fuzz.py 50000 --start 10000 # 50,000 more
    python bench/fuzz.py 1 --start 1234 -v   # replay one seed: print its scenario and what failed

Scenarios and checks are the property tests' (tests/simulator/scenarios.py): a policy with parameters
drawn from its `parameters` table, 1-4 replicas behind any router or a disaggregated prefill/decode pair,
pp 1/2/4, tight KV caches (rejections, preemption), fast path on or off, the linear predictor. Scenario
`seed` is drawn from numpy's default_rng(seed), so a failing seed replays exactly. Each scenario is also
run with the fast path on and off and compared (`fast_path_matches_stepping`). Prints what was checked,
how often each invariant failed and its first failing seeds; a failing seed belongs in the property
tests as a regression (tests/simulator/test_properties.py). Exits 1 if anything failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "simulator"))
import scenarios  # the property tests' generator and checks

FAST_PATH = "fast_path_matches_stepping"


def check_seed(seed: int) -> dict:
    """One scenario: what it covered and which checks failed (name -> first line of the message)."""
    s = scenarios.draw_scenario(scenarios.RngChoices(seed), seed=seed)
    failures, covered = {}, Counter()
    outcome = scenarios.simulate_scenario(s)
    for name, check in scenarios.INVARIANTS.items():
        try:
            check(outcome)
        except Exception as error:  # noqa: BLE001  (a crash inside a check is a failure to report too)
            failures[name] = f"{type(error).__name__}: {error}".splitlines()[0]
    try:
        covered["fast path compared"] += scenarios.fast_path_matches_stepping(s)
    except Exception as error:  # noqa: BLE001
        failures[FAST_PATH] = f"{type(error).__name__}: {error}".splitlines()[0]
    kind = "disaggregated" if s.disaggregated else "colocated"
    covered[kind] += 1
    for name, pool in s.pools.items():
        covered[f"{name} policy {pool.policy}"] += 1
        covered[f"{name} pp={pool.pp}"] += 1
        covered[f"{name} replicas={pool.num_replicas}"] += 1
    if not s.disaggregated:
        covered[f"router {s.router}"] += 1
    else:
        covered[f"pair {s.pools['prefill'].policy} -> {s.pools['decode'].policy}"] += 1
    covered[f"fast path {'on' if s.fast_decode_runs else 'off'}"] += 1
    if outcome.out is not None:
        records = outcome.out.records
        covered["with preemptions"] += bool(records.preemptions.sum())
        covered["with rejections"] += bool(records.rejected.any())
        covered["requests served"] += int((~records.rejected).sum())
        covered["requests rejected"] += int(records.rejected.sum())
    return {"seed": seed, "failures": failures, "covered": covered, "scenario": s}


def check_seeds(seeds: range) -> tuple[Counter, list]:
    covered, failed = Counter(), []
    for seed in seeds:
        result = check_seed(seed)
        covered += result["covered"]
        if result["failures"]:
            failed.append((seed, result["failures"]))
    return covered, failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, nargs="?", default=10_000, help="scenarios to run (default 10,000)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each failing scenario in full")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    chunk = max(1, min(250, args.count // (4 * args.workers) or 1))
    chunks = [range(a, min(a + chunk, args.start + args.count)) for a in range(args.start, args.start + args.count, chunk)]
    covered, failed = Counter(), []
    with ProcessPoolExecutor(args.workers) as pool:
        for part_covered, part_failed in pool.map(check_seeds, chunks):
            covered += part_covered
            failed += part_failed
    elapsed = time.perf_counter() - started

    print(f"{args.count:,} scenarios (seeds {args.start}..{args.start + args.count - 1}) in {elapsed:,.0f} s "
          f"({args.count / elapsed:,.0f} scenarios/s, {args.workers} workers)\n")
    print(f"{'check':<28} {'scenarios':>10} {'failed':>7}  first failing seeds")
    per_check = {name: [seed for seed, failures in failed if name in failures]
                 for name in [*scenarios.INVARIANTS, FAST_PATH]}
    for name, seeds in per_check.items():
        checked = covered["fast path compared"] if name == FAST_PATH else args.count
        print(f"{name:<28} {checked:>10,} {len(seeds):>7}  {' '.join(map(str, seeds[:8]))}")
    print("\ncovered")
    for key in sorted(covered):
        print(f"  {key:<52} {covered[key]:>10,}")
    for seed, failures in failed[:20]:
        print(f"\nseed {seed}:")
        for name, message in failures.items():
            print(f"  {name}: {message}")
        if args.verbose:
            print(f"  {check_seed(seed)['scenario']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
