"""The fidelity matrix, planned on a CPU: which configurations run on the GPU, at what rates, how many.

For every (trace, policy) it searches the simulated SLO capacity (simulator/experiments/capacity/, relaxed SLOs,
2,048 requests a trial), then makes one cell per load fraction with rate = load x capacity. A cell takes
the first requests of the trace (conversation: recorded arrivals compressed to the rate; arXiv: Poisson
arrivals at the rate) - as many as arrive in WINDOW_S seconds, within [MIN_REQUESTS, MAX_REQUESTS] -
and is simulated once here so the GPU run knows how long it should take (device time is scarce).

    python -m simulator.execute.plan --out data/validation/h100/fidelity/plan.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

TRACES = {"conversation": "conversation", "arxiv": "arxiv_poisson"}  # label -> conf/workload name
POLICIES = {  # label -> policy config
    "vllm": {"name": "vllm"},
    "sarathi512": {"name": "sarathi", "chunk_size": 512},
    "sarathi2048": {"name": "sarathi", "chunk_size": 2048},
    "orca": {"name": "orca"},
}
LOADS = (0.3, 0.6, 0.85)


def base_config(model: str, hardware: str, trace: str, policy: dict, slo: str = "relaxed", seed: int = 0,
                engine: str = "servesim_execute"):
    """SimulationConfig of one (trace, policy) on one GPU, from the conf/ YAML files, priced as `engine`
    (the engine servesim-execute will run the cell as: it reads the cell's config)."""
    from simulator.config import _load_yaml
    from simulator.run import SimulationConfig
    from simulator.workload import load_workload_config

    _, slo_values = _load_yaml("slo", slo)
    _, cluster = _load_yaml("cluster", "single")
    return SimulationConfig.from_dict({
        "model": model, "hardware": hardware, "cluster": cluster, "policy": dict(policy),
        "workload": load_workload_config(TRACES[trace]), "slo": slo_values, "seed": seed, "engine": engine,
    })


def capacity_qps(cfg, num_requests: int = 2048) -> dict:
    """The simulated SLO capacity of cfg (its `slo` group) with the default search settings."""
    from simulator.experiments.capacity import SearchConfig, run_capacity_search

    search = SearchConfig(slos=cfg.slo.slos, num_requests=num_requests)
    record = run_capacity_search(cfg, search, progress=False)
    return {"capacity_qps": record["capacity_qps"], "status": record["status"],
            "search": {"num_requests": num_requests, "tolerance": search.tolerance,
                       "warmup_fraction": search.warmup_fraction,
                       "cooldown_fraction": search.cooldown_fraction,
                       "slos": [dataclasses.asdict(s) for s in search.slos]}}


def cell_config(cfg, rate_qps: float, num_requests: int):
    """cfg serving `num_requests` requests at a mean of `rate_qps` (the capacity search's own rule)."""
    from simulator.experiments.capacity import native_rate_qps, with_rate

    sized = dataclasses.replace(cfg, workload=dataclasses.replace(cfg.workload, num_requests=num_requests))
    return with_rate(sized, rate_qps, num_requests, native_rate_qps(sized))


WINDOW_S = {"conversation": 20.0, "arxiv": 12.0}  # seconds of arrivals per cell (arXiv requests run longer)
MIN_REQUESTS = {"conversation": 40, "arxiv": 30}
MAX_REQUESTS = {"conversation": 200, "arxiv": 120}


def build_plan(model: str = "llama-3-8b", hardware: str = "h100", window_s: dict = WINDOW_S,
               min_requests: dict = MIN_REQUESTS, max_requests: dict = MAX_REQUESTS, traces=tuple(TRACES),
               policies=tuple(POLICIES), loads=LOADS, log=print, engine: str = "servesim_execute") -> dict:
    from simulator.execute.serve import config_dict
    from simulator.run import run_simulation

    cells, capacities = [], []
    for trace in traces:
        for label in policies:
            cfg = base_config(model, hardware, trace, POLICIES[label], engine=engine)
            t = time.perf_counter()
            capacity = capacity_qps(cfg)
            capacities.append({"trace": trace, "policy": label, **capacity})
            log(f"{trace} {label}: capacity {capacity['capacity_qps']:.3g} req/s ({capacity['status']}, "
                f"{time.perf_counter() - t:.0f} s)")
            for load in loads:
                rate = load * capacity["capacity_qps"]
                n = int(min(max(round(rate * window_s[trace]), min_requests[trace]), max_requests[trace]))
                cell_cfg = cell_config(cfg, rate, n)
                summary = run_simulation(cell_cfg).summary
                cells.append({
                    "name": f"{trace}-{label}-{round(load * 100)}", "trace": trace, "policy": label,
                    "load": load, "capacity_qps": capacity["capacity_qps"], "rate_qps": rate,
                    "num_requests": n, "predicted_served_s": summary["simulated_s"],
                    "predicted": {"ttft_s_p50": summary["ttft_s"]["p50"],
                                  "tbt_s_p99": summary["tbt_s"]["p99"],
                                  "e2e_s_p50": summary["e2e_s"]["p50"]},
                    "config": config_dict(cell_cfg),
                })
    total = sum(c["predicted_served_s"] for c in cells)
    log(f"{len(cells)} cells, {total:.0f} s of serving predicted")
    return {
        "what": (f"Fidelity matrix for {model} on one {hardware} run as engine {engine}: each (trace, policy) at "
                 f"{list(loads)} of its simulated SLO capacity; made by `python -m simulator.execute.plan` "
                 f"(simulator/execute/plan.py)"),
        "window_s": window_s, "min_requests": min_requests, "max_requests": max_requests,
        "capacities": capacities, "cells": cells, "predicted_served_s_total": total,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--engine", default="servesim_execute",
                        help="conf/engine profile the cells are simulated and then executed as (servesim_execute, "
                             "servesim_execute_piecewise)")
    args = parser.parse_args(argv)
    plan = build_plan(args.model, args.hardware, engine=args.engine)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(plan, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
