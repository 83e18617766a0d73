"""SLO attainment and goodput (DistServe's definitions), and the DistServe comparison experiment.

  attainment  share of the measured requests that meet BOTH the TTFT and the TPOT target. A rejected or
              unfinished request misses; a completed one-token request has no TPOT and meets that part.
  goodput     the highest request rate at which attainment >= target (e.g. 90 %), found with
              simulator.experiments.capacity.search_capacity (the same bracketing search as the capacity app), and
              reported per GPU so that clusters of different sizes compare.

An experiment (conf/experiment/distserve_*.yaml) names systems (Hydra overrides: a disaggregated
cluster, colocated vLLM, colocated Sarathi ...), workloads (overrides and their TTFT/TPOT targets) and
per-GPU rates. `python -m simulator.experiments.goodput conf/experiment/distserve_llama3_8b.yaml --out DIR`
writes DIR/curve.csv (one row per system x workload x rate: attainment, latency percentiles, hand-off
times) and DIR/goodput.csv (one row per system x workload). Finished rows are kept when it is run again
(resume). `python -m plots.disaggregation DIR` draws them.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from simulator.atomic import write_atomically, write_text_atomically
from simulator.config import ConfigError
from simulator.provenance import StaleResultsError, check_fingerprint, results_fingerprint


@dataclass(frozen=True)
class AttainmentSLO:
    """Per-request targets (seconds) and the share of requests that must meet both."""

    ttft_max_s: float
    tpot_max_s: float
    target: float = 0.9

    def __post_init__(self) -> None:
        if not (self.ttft_max_s > 0 and self.tpot_max_s > 0):
            raise ConfigError(f"ttft_max_s={self.ttft_max_s} and tpot_max_s={self.tpot_max_s} must be positive")
        if not 0 < self.target <= 1:
            raise ConfigError(f"attainment target={self.target} must be in (0, 1]")


def slo_attainment(requests: pd.DataFrame, ttft_max_s: float, tpot_max_s: float) -> float:
    """Share of `requests` (a request table) meeting both targets; NaN when the table is empty."""
    if len(requests) == 0:
        return float("nan")
    ttft = requests["ttft_s"].to_numpy(dtype=float)
    tpot = requests["tpot_s"].to_numpy(dtype=float)
    completed = requests["completed_s"].notna().to_numpy() & ~requests["rejected"].to_numpy(dtype=bool)
    one_token = requests["output_tokens"].to_numpy() <= 1
    meets = completed & (ttft <= ttft_max_s) & ((tpot <= tpot_max_s) | one_token)
    return float(meets.mean())


def measure(cfg, rate_qps: float, slo: AttainmentSLO, num_requests: int, trace_rate_qps: float | None,
            warmup_fraction: float = 0.1, cooldown_fraction: float = 0.1) -> dict:
    """Simulate `cfg` (a resolved SimulationConfig) at `rate_qps` and return one row: attainment over the
    trimmed window and the latency percentiles behind it (seconds). `trace_rate_qps`: the trace's own
    rate (simulator.experiments.capacity.native_rate_qps, found once per configuration), None for
    synthetic arrivals."""
    from simulator.experiments.capacity import with_rate
    from simulator.run import run_simulation
    from simulator.slo import measured_requests

    result = run_simulation(with_rate(cfg, rate_qps, num_requests, trace_rate_qps))
    table = measured_requests(result.requests, warmup_fraction, cooldown_fraction)
    row = {"rate_qps": rate_qps, "attainment": slo_attainment(table, slo.ttft_max_s, slo.tpot_max_s),
           "ttft_attainment": float((table["ttft_s"] <= slo.ttft_max_s).mean()),
           "tpot_attainment": float(((table["tpot_s"] <= slo.tpot_max_s) | (table["output_tokens"] <= 1)).mean())}
    for column in ("ttft_s", "tpot_s", "kv_transfer_s", "decode_wait_s"):
        if column in table:
            values = table[column].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            for q in (50, 90, 99):
                row[f"{column}_p{q}"] = float(np.percentile(values, q)) if len(values) else float("nan")
    row["throughput_rps"] = result.summary["throughput_rps"]
    if "disaggregation" in result.summary:
        block = result.summary["disaggregation"]
        for pool in ("prefill", "decode"):
            row[f"{pool}_busy_fraction"] = block[pool]["busy_fraction"]
            row[f"{pool}_batch_size_mean"] = block[pool]["batch_size_mean"]
        row["link_busy_fraction"] = block["link"]["busy_fraction"]
    return row


def goodput_search(cfg, slo: AttainmentSLO, num_requests: int, initial_rate_qps: float, tolerance: float = 0.04,
                   warmup_fraction: float = 0.1, cooldown_fraction: float = 0.1):
    """simulator.experiments.capacity.search_capacity with attainment >= slo.target as the pass criterion.
    Returns its CapacityResult (capacity_qps is the goodput of the whole cluster)."""
    from simulator.experiments.capacity import SearchConfig, Trial, native_rate_qps, search_capacity
    from simulator.slo import SLO

    trace_rate_qps = native_rate_qps(cfg)  # once per search: every trial replays the same requests

    def evaluate(rate_qps: float) -> Trial:
        row = measure(cfg, rate_qps, slo, num_requests, trace_rate_qps, warmup_fraction, cooldown_fraction)
        passed = row["attainment"] >= slo.target
        violations = [] if passed else [f"attainment {row['attainment']:.3f} < {slo.target}"]
        return Trial(rate_qps=rate_qps, feasible=passed, metrics=row, violations=violations)

    # The search reads only its rate settings; `slos` is required by SearchConfig and unused here.
    search = SearchConfig(slos=[SLO("ttft_s", 100 * slo.target, slo.ttft_max_s)], num_requests=num_requests,
                          initial_rate_qps=initial_rate_qps, min_rate_qps=initial_rate_qps / 64,
                          max_rate_qps=initial_rate_qps * 64, tolerance=tolerance)
    return search_capacity(evaluate, search)


# --- the experiment --------------------------------------------------------------------------------


def load_experiment(path: str | Path) -> dict:
    """Read and check an experiment YAML (see conf/experiment/distserve_llama3_8b.yaml)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    for key in ("name", "systems", "workloads"):
        if key not in spec:
            raise ConfigError(f"{path}: field '{key}' is missing")
    for name, workload in spec["workloads"].items():
        for key in ("overrides", "ttft_max_s", "tpot_max_s", "rates_per_gpu"):
            if key not in workload:
                raise ConfigError(f"{path}: workloads.{name}.{key} is missing")
    return spec


def run_experiment(spec: dict, out_dir: str | Path, progress: bool = True,
                   fingerprint: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attainment curves and goodput of every system x workload; resumes from out_dir's CSVs, only under
    the same `fingerprint` (simulator.provenance.results_fingerprint(); None: no check)."""
    from simulator.experiments.capacity import compose_capacity_config, native_rate_qps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve_path, goodput_path = out / "curve.csv", out / "goodput.csv"
    curve = pd.read_csv(curve_path) if curve_path.exists() else pd.DataFrame()
    goodput = pd.read_csv(goodput_path) if goodput_path.exists() else pd.DataFrame()
    if fingerprint is not None:
        check_fingerprint(out, fingerprint, finished=len(curve) + len(goodput),
                          results_files=(curve_path.name, goodput_path.name))
    write_text_atomically(out / "experiment.json", json.dumps(spec, indent=2) + "\n")
    num_requests = int(spec.get("num_requests", 1000))
    target = float(spec.get("target", 0.9))
    trims = float(spec.get("warmup_fraction", 0.1)), float(spec.get("cooldown_fraction", 0.1))
    jobs = [(s, w, r) for w, wspec in spec["workloads"].items() for s in spec["systems"]
            for r in wspec["rates_per_gpu"]]
    bar = tqdm(total=len(jobs) + len(spec["systems"]) * len(spec["workloads"]), desc=spec["name"],
               unit="run", disable=not progress)
    for workload, wspec in spec["workloads"].items():
        slo = AttainmentSLO(float(wspec["ttft_max_s"]), float(wspec["tpot_max_s"]), target)
        for system, overrides in spec["systems"].items():
            cfg, _ = compose_capacity_config([*spec.get("base", []), *overrides, *wspec["overrides"]])
            # One resolved configuration per system and workload; each rate's run replaces its workload's rate.
            gpus, trace_rate_qps = cfg.cluster.num_gpus, native_rate_qps(cfg)
            for rate_per_gpu in wspec["rates_per_gpu"]:
                bar.update(1)
                if _done(curve, system=system, workload=workload, rate_per_gpu=float(rate_per_gpu)):
                    continue
                row = {"system": system, "workload": workload, "num_gpus": gpus,
                       "rate_per_gpu": float(rate_per_gpu), "ttft_max_s": slo.ttft_max_s,
                       "tpot_max_s": slo.tpot_max_s,
                       **measure(cfg, float(rate_per_gpu) * gpus, slo, num_requests, trace_rate_qps, *trims)}
                curve = pd.concat([curve, pd.DataFrame([row])], ignore_index=True)
                write_atomically(curve_path, lambda temp, table=curve: table.to_csv(temp, index=False))
            bar.update(1)
            if _done(goodput, system=system, workload=workload):
                continue
            bar.set_postfix_str(f"goodput {system} {workload}")
            result = goodput_search(cfg, slo, num_requests, initial_rate_qps=float(wspec.get("initial_rate_per_gpu", 1.0)) * gpus,
                                    warmup_fraction=trims[0], cooldown_fraction=trims[1])
            row = {"system": system, "workload": workload, "num_gpus": gpus, "target": target,
                   "ttft_max_s": slo.ttft_max_s, "tpot_max_s": slo.tpot_max_s,
                   "goodput_qps": result.capacity_qps, "goodput_per_gpu": result.capacity_qps / gpus,
                   "status": result.status, "trials": len(result.trials)}
            goodput = pd.concat([goodput, pd.DataFrame([row])], ignore_index=True)
            write_atomically(goodput_path, lambda temp, table=goodput: table.to_csv(temp, index=False))
    bar.close()
    return curve, goodput


def _done(table: pd.DataFrame, **keys) -> bool:
    if table.empty:
        return False
    mask = np.ones(len(table), dtype=bool)
    for key, value in keys.items():
        column = table[key].to_numpy()
        mask &= np.isclose(column.astype(float), value) if isinstance(value, float) else column == value
    return bool(mask.any())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DistServe-style SLO attainment and goodput comparison")
    parser.add_argument("experiment", help="conf/experiment/<name>.yaml")
    parser.add_argument("--out", required=True, help="output directory (rerun to resume)")
    args = parser.parse_args(argv)
    spec = load_experiment(args.experiment)
    try:
        _, goodput = run_experiment(spec, args.out, fingerprint=results_fingerprint())
    except StaleResultsError as e:
        raise SystemExit(f"goodput: {e}") from None
    print(goodput.to_string(index=False))


if __name__ == "__main__":
    main()
