"""The fidelity matrix, planned on a CPU: which configurations run on the GPU, at what rates, how many.

For every (trace, policy) it searches the simulated SLO capacity (simulator/experiments/capacity/, relaxed SLOs,
2,048 requests a trial), then makes one cell per load fraction with rate = load x capacity. A cell takes
the first requests of the trace (conversation: recorded arrivals compressed to the rate; arXiv: Poisson
arrivals at the rate) - as many as arrive in WINDOW_S seconds, within [MIN_REQUESTS, MAX_REQUESTS] -
and is simulated once here so the GPU run knows how long it should take (device time is scarce).

    python -m simulator.execute.plan --out data/validation/h100/fidelity/plan.json

The prefix-cache matrix (vLLM V1 with and without prefix caching on the Mooncake conversation trace, a
128k-context model; the KV cache is sized down so that servesim-execute's block store fits beside its slots,
simulator/execute/prefix_rows.py):
    python -m simulator.execute.plan --suite prefix --out data/validation/h100/fidelity_prefix/plan.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

TRACES = {"conversation": "conversation", "arxiv": "arxiv_poisson",  # label -> conf/workload name
          "mooncake": "mooncake_conversation"}
MOONCAKE_SLICE = "data/validation/h100/fidelity_prefix/mooncake_slice.jsonl.gz"  # written by mooncake_slice()
SLICE_CONVERSATIONS = 25
# Fields changed from the conf/workload file. Mooncake's arrivals come in 3-second steps of up to 17
# requests, so one GPU meets no TTFT SLO at any replay speed: its cells keep the slice's requests in order
# (shuffle_rows false, and so their shared prefixes) with Poisson arrivals, and answers clipped to 128 tokens (the slice's mean
# is 398: unclipped, one-at-a-time decoding would take most of the GPU time a session has; the hash ids
# cover prompts only, so what is shared is unchanged).
WORKLOAD_OVERRIDES = {"mooncake": {"arrival": "poisson", "shuffle_rows": False, "trace": MOONCAKE_SLICE,
                                   "max_output_tokens": 128}}
POLICIES = {  # label -> policy config
    "vllm": {"name": "vllm"},
    "sarathi512": {"name": "sarathi", "chunk_size": 512},
    "sarathi2048": {"name": "sarathi", "chunk_size": 2048},
    "orca": {"name": "orca"},
    "vllmv1": {"name": "vllm_v1"},
    "vllmv1nocache": {"name": "vllm_v1", "enable_prefix_caching": False},
}
LOADS = (0.3, 0.6, 0.85)


def base_config(model: str, hardware: str, trace: str, policy: dict, slo: str = "relaxed", seed: int = 0,
                engine: str = "servesim_execute", cluster_overrides: dict | None = None):
    """SimulationConfig of one (trace, policy) on one GPU, from the conf/ YAML files, priced as `engine`
    (the engine servesim-execute will run the cell as: it reads the cell's config); cluster_overrides:
    fields of conf/cluster/single.yaml to change."""
    from simulator.config import _load_yaml
    from simulator.run import SimulationConfig
    from simulator.workload import load_workload_config

    _, slo_values = _load_yaml("slo", slo)
    _, cluster = _load_yaml("cluster", "single")
    cluster = {**cluster, **(cluster_overrides or {})}
    return SimulationConfig.from_dict({
        "model": model, "hardware": hardware, "cluster": cluster, "policy": dict(policy),
        "workload": load_workload_config(TRACES[trace], **WORKLOAD_OVERRIDES.get(trace, {})), "slo": slo_values, "seed": seed, "engine": engine,
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


# Seconds of arrivals per cell, and bounds on its requests (arXiv and Mooncake requests run longer).
WINDOW_S = {"conversation": 20.0, "arxiv": 12.0, "mooncake": 40.0}
MIN_REQUESTS = {"conversation": 40, "arxiv": 30}
MAX_REQUESTS = {"conversation": 200, "arxiv": 120}
WHOLE_TRACES = ("mooncake",)  # cells (and their capacity search) serve every request of the trace once


def mooncake_slice(num_conversations: int = SLICE_CONVERSATIONS, out: str = MOONCAKE_SLICE,
                   source: str = "data/traces/mooncake/conversation_trace.jsonl.gz") -> dict:
    """Write every request of the first `num_conversations` conversations of the Mooncake conversation trace,
    in trace order, as a trace of the same format (gzip JSON lines); return what it holds.

    A short run of consecutive requests shares little (a turn's earlier turns are a median of about 1,100
    requests back), so the slice keeps whole conversations. Every request's hash_ids[0] is the same block
    (a system prompt); hash_ids[1] begins the conversation's own text, so requests with equal hash_ids[1]
    are turns of one conversation. A request with one block is a conversation of its own."""
    import gzip

    from simulator.paths import REPO_ROOT

    with gzip.open(REPO_ROOT / source, "rt", encoding="utf-8") as file:
        lines = [line for line in file if line.strip()]
    rows = [json.loads(line) for line in lines]
    first_turn: dict = {}
    keep = []
    for i, row in enumerate(rows):
        key = row["hash_ids"][1] if len(row["hash_ids"]) > 1 else ("alone", i)
        if key not in first_turn and len(first_turn) < num_conversations:
            first_turn[key] = i
        if key in first_turn:
            keep.append(i)
    path = REPO_ROOT / out
    path.parent.mkdir(parents=True, exist_ok=True)
    # No name or time in the gzip header: the same bytes every time, wherever it is written.
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as file:
        file.write("".join(lines[i] for i in keep).encode())
    return {"trace": out, "source": source, "conversations": num_conversations, "requests": len(keep),
            "source_rows": [int(i) for i in keep]}


@dataclasses.dataclass(frozen=True)
class Suite:
    """One fidelity matrix: which model, traces, policies and loads, on which cluster settings."""

    model: str
    traces: tuple
    policies: tuple
    loads: tuple = LOADS
    engine: str = "servesim_execute"
    cluster_overrides: dict = dataclasses.field(default_factory=dict)


SUITES = {
    # The first fidelity matrix: servesim's own policies on a short-context model.
    "policies": Suite("llama-3-8b", ("conversation", "arxiv"), ("vllm", "sarathi512", "sarathi2048", "orca")),
    # Prefix caching, executed for real: the KV cache sized to 0.45 of an 80 GiB GPU (about 150k tokens for
    # Llama-3.1-8B) so that the block store (as large as the simulated cache) fits beside the slots.
    "prefix": Suite("llama-3.1-8b", ("mooncake",), ("vllmv1", "vllmv1nocache"), (0.4, 0.8),
                    "servesim_execute_piecewise", {"gpu_memory_utilization": 0.45}),
}


def trace_rows(cfg) -> int:
    """How many requests cfg's trace holds."""
    from simulator.workload import load_workload

    return len(load_workload(dataclasses.replace(cfg.workload, num_requests=None), cfg.seed).prompt_tokens)


def build_plan(model: str = "llama-3-8b", hardware: str = "h100", window_s: dict = WINDOW_S,
               min_requests: dict = MIN_REQUESTS, max_requests: dict = MAX_REQUESTS,
               traces=SUITES["policies"].traces, policies=SUITES["policies"].policies, loads=LOADS, log=print,
               engine: str = "servesim_execute", cluster_overrides: dict | None = None) -> dict:
    from simulator.execute.serve import config_dict
    from simulator.run import run_simulation

    cells, capacities = [], []
    for trace in traces:
        for label in policies:
            cfg = base_config(model, hardware, trace, POLICIES[label], engine=engine,
                              cluster_overrides=cluster_overrides)
            t = time.perf_counter()
            rows = trace_rows(cfg) if trace in WHOLE_TRACES else None
            capacity = capacity_qps(cfg, rows) if rows else capacity_qps(cfg)
            capacities.append({"trace": trace, "policy": label, **capacity})
            log(f"{trace} {label}: capacity {capacity['capacity_qps']:.3g} req/s ({capacity['status']}, "
                f"{time.perf_counter() - t:.0f} s)")
            for load in loads:
                rate = load * capacity["capacity_qps"]
                n = rows or int(min(max(round(rate * window_s[trace]), min_requests[trace]), max_requests[trace]))
                cell_cfg = cell_config(cfg, rate, n)
                result = run_simulation(cell_cfg)
                summary = result.summary
                cells.append({
                    "name": f"{trace}-{label}-{round(load * 100)}", "trace": trace, "policy": label,
                    "load": load, "capacity_qps": capacity["capacity_qps"], "rate_qps": rate,
                    "num_requests": n, "predicted_served_s": summary["simulated_s"],
                    # the busy clock skips idle gaps: serving time less them is what the GPU works
                    "predicted_busy_s": float(result.iterations["duration_s"].sum()),
                    "predicted": {"ttft_s_p50": summary["ttft_s"]["p50"],
                                  "tbt_s_p99": summary["tbt_s"]["p99"],
                                  "e2e_s_p50": summary["e2e_s"]["p50"]},
                    "config": config_dict(cell_cfg),
                })
    total = sum(c["predicted_served_s"] for c in cells)
    busy = sum(c["predicted_busy_s"] for c in cells)
    log(f"{len(cells)} cells, {total:.0f} s of serving predicted, {busy:.0f} s of it busy")
    return {
        "what": (f"Fidelity matrix for {model} on one {hardware} run as engine {engine}: each (trace, policy) at "
                 f"{list(loads)} of its simulated SLO capacity; made by `python -m simulator.execute.plan` "
                 f"(simulator/execute/plan.py)"),
        "cluster_overrides": cluster_overrides or {},
        "window_s": window_s, "min_requests": min_requests, "max_requests": max_requests,
        "capacities": capacities, "cells": cells, "predicted_served_s_total": total,
        "predicted_busy_s_total": busy,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--suite", default="policies", choices=tuple(SUITES),
                        help="which matrix: policies (servesim's schedulers, conversation and arXiv) or prefix "
                             "(vLLM V1 with and without prefix caching on the Mooncake trace)")
    parser.add_argument("--model", help="model of the cells (default: the suite's)")
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--engine", help="conf/engine profile the cells are simulated and then executed as "
                                         "(servesim_execute, servesim_execute_piecewise; default: the suite's)")
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    made = mooncake_slice() if "mooncake" in suite.traces else None
    plan = build_plan(args.model or suite.model, args.hardware, traces=suite.traces, policies=suite.policies,
                      loads=suite.loads, engine=args.engine or suite.engine,
                      cluster_overrides=suite.cluster_overrides)
    if made is not None:
        plan["mooncake_slice"] = made
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(plan, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
