"""One executed run (a servesim-execute run directory) against its simulation: the run's files and
configuration, the simulation of that configuration, and the comparison of the two."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.experiments.compare.metrics import (
    LATENCY_METRICS,
    PERCENTILES,
    abs_error_stats,
    cpu_overhead_fit,
    iteration_kind,
    iteration_replay,
    latency_metrics,
    signed_error_pct,
    tbt_gaps_from_tokens,
)

RUN_FILES = ("config.json", "requests.parquet", "token_times.parquet", "steps.parquet",
             "compositions.parquet")


@dataclass
class RunComparison:
    """One executed run against its simulation."""

    name: str
    labels: dict  # trace, policy, load, rate_qps, num_requests (from the run's config and plan)
    measured: dict  # latency_metrics of the execution
    simulated: dict  # latency_metrics of the simulation
    iterations: pd.DataFrame  # executed steps + predicted_s, predicted_gpu_s, kind
    cpu: dict  # cpu_overhead_fit of the execution
    samples: dict  # arrays for plots: {"measured"|"simulated": {"ttft_s", "tbt_s", "e2e_s", "iteration_s"}}

    def errors(self) -> dict:
        keys = [f"{m}_p{p}" for m in LATENCY_METRICS for p in PERCENTILES] + ["throughput_rps",
                                                                              "output_tokens_per_s"]
        return {k: signed_error_pct(self.simulated[k], self.measured[k]) for k in keys}

    def iteration_errors(self) -> dict:
        it = self.iterations
        return {"total": abs_error_stats(it["predicted_s"].to_numpy(), it["duration_s"].to_numpy()),
                "gpu": abs_error_stats(it["predicted_gpu_s"].to_numpy(), it["gpu_s"].to_numpy())}

    def row(self) -> dict:
        """One flat row for the summary table."""
        row = {"run": self.name, **self.labels}
        for k, v in self.measured.items():
            row[f"measured_{k}"] = v
        for k, v in self.simulated.items():
            row[f"simulated_{k}"] = v
        for k, v in self.errors().items():
            row[f"error_pct_{k}"] = v
        for part, stats in self.iteration_errors().items():
            for k, v in stats.items():
                row[f"iteration_{part}_{k}"] = v
        for kind, group in self.iterations.groupby("kind"):
            stats = abs_error_stats(group["predicted_s"].to_numpy(), group["duration_s"].to_numpy())
            row[f"iteration_total_{kind}_median_abs_pct"] = stats["median_abs_pct"]
            row[f"iteration_{kind}_count"] = stats["n"]
        row["cpu_fixed_ms"] = self.cpu["fixed_s"] * 1e3
        row["cpu_per_sequence_ms"] = self.cpu["per_sequence_s"] * 1e3
        row["cpu_graph_iterations"] = self.cpu["iterations"]
        row["cpu_eager_median_exposed_ms"] = self.cpu.get("eager_median_exposed_ms", float("nan"))
        for part, ms in self.cpu["median_part_ms"].items():
            row[f"cpu_median_{part.removesuffix('_s')}_ms"] = ms
        return row


def read_run(run_dir: Path) -> dict:
    """The files of one execution; raises FileNotFoundError naming the missing one."""
    for name in RUN_FILES:
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name}: not found (is {run_dir} a servesim-execute run?)")
    return {
        "config": json.loads((run_dir / "config.json").read_text()),
        "requests": pd.read_parquet(run_dir / "requests.parquet"),
        "token_times": pd.read_parquet(run_dir / "token_times.parquet"),
        "steps": pd.read_parquet(run_dir / "steps.parquet"),
        "compositions": pd.read_parquet(run_dir / "compositions.parquet"),
    }


def run_labels(run_dir: Path, config: dict) -> dict:
    """trace, policy label, load and rate of a run: from the plan next to the runs when there is one."""
    for plan_path in (run_dir.parent / "plan.json", run_dir.parent.parent / "plan.json"):
        if plan_path.exists():
            cells = {c["name"]: c for c in json.loads(plan_path.read_text())["cells"]}
            if run_dir.name in cells:
                c = cells[run_dir.name]
                keys = ("trace", "policy", "load", "rate_qps", "num_requests", "capacity_qps")
                return {k: c[k] for k in keys}
    policy = config["policy"]
    label = policy["name"] + (str(policy["chunk_size"]) if policy.get("chunk_size") else "")
    trace = config["workload"].get("name") or Path(str(config["workload"].get("trace") or "synthetic")).stem
    return {"trace": trace, "policy": label, "load": float("nan"),
            "rate_qps": float("nan"), "num_requests": config["workload"].get("num_requests"),
            "capacity_qps": float("nan")}


RECORDED_BEFORE_ENGINE_PROFILES = "servesim_execute"


def run_config(config: dict):
    """The SimulationConfig a run executed. Runs recorded before engine profiles existed have no `engine`
    in config.json: they ran servesim_execute (fused varlen attention, decode-only CUDA graphs)."""
    from simulator.run import SimulationConfig

    return SimulationConfig.from_dict({"engine": RECORDED_BEFORE_ENGINE_PROFILES, **config})


class PredictorCache:
    """One fitted predictor per (model, hardware, engine profile, CPU overhead) - fits are the slow part."""

    def __init__(self):
        self._cache = {}

    def get(self, cfg, cpu_overhead_s):
        from simulator.run import build_predictor

        key = (cfg.model.name, cfg.hardware.name, cfg.predictor, cfg.engine, cpu_overhead_s)
        if key not in self._cache:
            self._cache[key] = build_predictor(dataclasses.replace(cfg, cpu_overhead_s=cpu_overhead_s))
        return self._cache[key]


def simulate(cfg, predictor):
    """simulator.run.run_simulation's simulation of cfg, with the given iteration-time predictor:
    (requests table, token_times table, iteration durations in s)."""
    from simulator import metrics
    from simulator.cluster import simulate as simulate_cluster
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState
    from simulator.run import policy_factory
    from simulator.workload import load_workload

    workload = load_workload(cfg.workload, cfg.seed)
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len, content=workload.content)
    out = simulate_cluster(requests, policy_factory(cfg.policy, hardware=cfg.hardware, engine=cfg.engine), predictor,
                           kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster),
                           block_size=cfg.cluster.block_size, num_replicas=cfg.cluster.num_replicas,
                           router=cfg.cluster.router, kv_watermark=cfg.cluster.kv_watermark, seed=cfg.seed)
    return (metrics.request_table(out.records), metrics.token_times_table(out.records),
            np.asarray(out.iterations.duration_s))


def compare_run(run_dir: str | Path, predictors: PredictorCache | None = None,
                host_terms: dict | None = None) -> RunComparison:
    """Simulate the run's config and compare (see the module docstring). host_terms: None keeps the host
    terms of the engine profile the run executed; a dict of EngineProfile host fields replaces them."""
    run_dir = Path(run_dir)
    predictors = predictors or PredictorCache()
    run = read_run(run_dir)
    cfg = run_config(run["config"])
    if host_terms:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, **host_terms))
    predictor = predictors.get(cfg, cfg.cpu_overhead_s)
    gpu_only = predictors.get(cfg, 0.0)
    sim_requests, sim_tokens, sim_iteration_s = simulate(cfg, predictor)
    measured = latency_metrics(run["requests"], run["token_times"])
    simulated = latency_metrics(sim_requests, sim_tokens)

    steps = run["steps"].copy()
    comp = run["compositions"]
    steps["predicted_s"] = iteration_replay(comp, lambda q, kv: predictor.stage_times_s(q, kv)[0])
    steps["predicted_gpu_s"] = iteration_replay(comp, lambda q, kv: gpu_only.stage_times_s(q, kv)[0])
    steps["kind"] = iteration_kind(steps)

    def samples(requests, tokens, iteration_s):
        done = requests[requests["completed_s"].notna()]
        return {"ttft_s": done["ttft_s"].to_numpy(), "e2e_s": done["e2e_s"].to_numpy(),
                "tbt_s": tbt_gaps_from_tokens(tokens), "iteration_s": np.asarray(iteration_s)}

    return RunComparison(
        name=run_dir.name, labels=run_labels(run_dir, run["config"]), measured=measured, simulated=simulated,
        iterations=steps, cpu=cpu_overhead_fit(steps),
        samples={"measured": samples(run["requests"], run["token_times"], steps["duration_s"]),
                 "simulated": samples(sim_requests, sim_tokens, sim_iteration_s)},
    )


def find_runs(roots: list[Path]) -> list[Path]:
    """Run directories (holding config.json and steps.parquet) under `roots`, sorted by name."""
    found = set()
    for root in roots:
        root = Path(root)
        for config in [root / "config.json", *root.rglob("config.json")]:
            if config.exists() and (config.parent / "steps.parquet").exists():
                found.add(config.parent)
    return sorted(found)
