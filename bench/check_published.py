"""Regenerate the numbers the README and docs publish and compare them with what is published.

    python bench/check_published.py                 # every part; prints a table, exit 1 if any drifted
    python bench/check_published.py --parts default distserve
    python bench/check_published.py --write         # record today's numbers as the published ones

The published numbers live in docs/published_numbers.json with the library versions and date they were made
with. A part is:
  default     the default `servesim` run (llama-3-8b, Sarathi-Serve, the conversation trace, vllm_v1): TTFT,
              TBT, E2E percentiles and the iteration count (about 10 s)
  sarathi     the Sarathi-Serve reproduction's capacities (python -m plots.sarathi, 48 searches, ~4 min)
  distserve   the DistServe comparison's goodput per GPU (~1 min)
  fidelity    servesim-compare --held-out over the 24 H100 fidelity runs: per-run errors (~10 s)
A number drifts when it differs from the published one by more than the part's tolerance: simulations are
deterministic for one set of library versions, so any difference there means code, data or a library
changed the published result; capacities move in whole search steps (the searches bisect to 2 %).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
PUBLISHED = REPO_ROOT / "docs" / "published_numbers.json"
TOLERANCE = {"default": 0.005, "sarathi": 0.05, "distserve": 0.05, "fidelity": 0.02}  # relative
LIBRARIES = ("numpy", "pandas", "scikit-learn", "scipy", "simpy", "pyarrow")


def default_run() -> dict:
    from simulator.run import SimulationConfig, run_simulation

    s = run_simulation(SimulationConfig.from_dict({"model": "llama-3-8b", "hardware": "h100"})).summary
    out = {f"{metric}_{p}": s[metric][p] for metric in ("ttft_s", "tbt_s", "e2e_s") for p in ("p50", "p99")}
    return out | {"iterations": s["num_iterations"]}


def sarathi() -> dict:
    from plots.sarathi import load_results, main, reproduction_table

    with tempfile.TemporaryDirectory() as scratch:
        main(["--sweeps-dir", f"{scratch}/sweeps", "--docs-dir", f"{scratch}/docs"])
        table = reproduction_table(load_results(Path(scratch) / "sweeps"))
    return {f"{r.model}/{r.workload}/{r.slo}/{policy}": float(getattr(r, policy)) for r in table.itertuples(index=False)
            for policy in ("orca", "vllm", "sarathi") if policy in table.columns}


def distserve() -> dict:
    import pandas as pd

    from simulator.experiments.goodput import main

    with tempfile.TemporaryDirectory() as scratch:
        main([str(REPO_ROOT / "conf/experiment/distserve_llama3_8b.yaml"), "--out", scratch])
        table = pd.read_csv(Path(scratch) / "goodput.csv")
    return {f"{r.system}/{r.workload}": float(r.goodput_per_gpu) for r in table.itertuples(index=False)}


def fidelity() -> dict:
    import pandas as pd

    from simulator.experiments.compare.cli import main

    with tempfile.TemporaryDirectory() as scratch:
        main([str(REPO_ROOT / "data/validation/h100/fidelity/runs"), "--held-out", "--out", scratch])
        table = pd.read_csv(Path(scratch) / "summary.csv")
    out = {}
    for r in table.itertuples(index=False):
        for key in ("ttft_s_p50", "tbt_s_p99", "e2e_s_p50"):
            out[f"{r.run}/{key}_measured"] = float(getattr(r, f"measured_{key}"))
            out[f"{r.run}/{key}_simulated"] = float(getattr(r, f"simulated_{key}"))
    return out


PARTS = {"default": default_run, "sarathi": sarathi, "distserve": distserve, "fidelity": fidelity}


def compare(part: str, now: dict, published: dict) -> list[tuple[str, float, float]]:
    """(key, published, now) of every number that moved by more than the part's tolerance, or appeared or
    disappeared."""
    drifted = []
    for key in sorted(set(now) | set(published)):
        a, b = published.get(key), now.get(key)
        if a is None or b is None or abs(b - a) > TOLERANCE[part] * max(abs(a), 1e-12):
            drifted.append((key, a, b))
    return drifted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--write", action="store_true", help="record today's numbers as the published ones")
    args = parser.parse_args(argv)
    published = json.loads(PUBLISHED.read_text()) if PUBLISHED.exists() else {"parts": {}}
    rows, failed = [], False
    for part in args.parts:
        started = time.perf_counter()
        now = PARTS[part]()
        seconds = time.perf_counter() - started
        if args.write:
            published["parts"][part] = now
            rows.append((part, len(now), "written", seconds))
            continue
        drifted = compare(part, now, published["parts"].get(part, {}))
        failed |= bool(drifted)
        rows.append((part, len(now), "ok" if not drifted else f"{len(drifted)} drifted", seconds))
        for key, a, b in drifted[:20]:
            print(f"  {part}: {key}: published {a}, now {b}")
    if args.write:
        published["made"] = {"date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                             "python": sys.version.split()[0],
                             "libraries": {name: metadata.version(name) for name in LIBRARIES},
                             "command": "python bench/check_published.py --write"}
        PUBLISHED.write_text(json.dumps(published, indent=1, sort_keys=True) + "\n")
    print(f"{'part':<10} {'numbers':>8}  {'result':<14} {'seconds':>8}")
    for part, count, result, seconds in rows:
        print(f"{part:<10} {count:>8}  {result:<14} {seconds:>8.1f}")
    made = published.get("made", {})
    if made and not args.write:
        print(f"published numbers made {made.get('date_utc')} with {made.get('libraries')}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
