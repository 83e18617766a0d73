"""What a finished capacity search leaves: the capacity.json record (with the derived economics), its
flat table rows, the configuration summary that names it in tables and plots, and the files written."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from simulator.experiments.capacity.search import CapacityResult, SearchConfig, Trial
from simulator.parts import effective_policy_params
from simulator.slo import slo_table


def cost_per_million_tokens_usd(
    capacity_qps: float, mean_tokens_per_request: float, num_gpus: int, price_per_gpu_hour_usd: float
) -> float | None:
    """Dollars per million tokens served at capacity: GPU-hours bought per hour over tokens per hour.
    None when no price is known or nothing is served."""
    if price_per_gpu_hour_usd <= 0 or capacity_qps <= 0 or mean_tokens_per_request <= 0:
        return None
    tokens_per_hour = capacity_qps * mean_tokens_per_request * 3600.0
    return num_gpus * price_per_gpu_hour_usd / tokens_per_hour * 1e6


def trial_to_dict(trial: Trial) -> dict:
    """A JSON-ready record of one trial (inf and NaN become strings JSON can hold)."""
    record = asdict(trial)
    record["metrics"] = {k: json_number(v) for k, v in trial.metrics.items()}
    return record


def json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


# --- capacity.json records and table rows ---------------------------------------------------------

SUMMARY_FIELDS = ("model", "hardware", "policy", "chunk_size", "max_batch_size", "tp", "pp", "num_replicas",
                  "num_gpus", "workload", "slo_name")


def record_row(record: dict) -> dict:
    """One flat table row of a capacity.json record: the configuration's summary fields, the capacity
    and its derived numbers, and the metrics of the trial at capacity."""
    row = {k: record["summary"].get(k) for k in SUMMARY_FIELDS}
    row.update({
        "capacity_qps": record["capacity_qps"],
        "capacity_status": record["status"],
        "lowest_failing_qps": record.get("lowest_failing_qps"),
        "qps_per_gpu": record["qps_per_gpu"],
        "cost_per_million_tokens_usd": record.get("cost_per_million_tokens_usd"),
        "cost_per_million_output_tokens_usd": record.get("cost_per_million_output_tokens_usd"),
        "num_trials": len(record["trials"]),
        "search_wall_s": record.get("search_wall_s"),
    })
    for key, value in (record.get("metrics_at_capacity") or {}).items():
        row[key] = number_from_json(value)
    return row


def trial_rows(record: dict) -> list[dict]:
    """One flat row per trial of a capacity.json record, with the configuration's summary fields."""
    config = {k: record["summary"].get(k) for k in SUMMARY_FIELDS}
    rows = []
    for trial in record["trials"]:
        rows.append({**config, "rate_qps": trial["rate_qps"], "feasible": trial["feasible"],
                     "wall_s": trial.get("wall_s"), "violations": "; ".join(trial.get("violations", [])),
                     **{k: number_from_json(v) for k, v in trial["metrics"].items()}})
    return rows


def number_from_json(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def config_summary(cfg) -> dict:
    """The fields that name a configuration in tables and plots (see SUMMARY_FIELDS)."""
    params = effective_policy_params(cfg.policy, cfg.hardware, cfg.engine)  # as the run resolves them
    cluster = cfg.cluster
    return {
        "model": cfg.model.name, "hardware": cfg.hardware.name, "policy": cfg.policy.name,
        "chunk_size": params.get("chunk_size"),
        # The batch cap under whichever name the policy uses (vLLM calls it max_num_seqs).
        "max_batch_size": params.get("max_batch_size", params.get("max_num_seqs")),
        "tp": cluster.tp, "pp": cluster.pp, "num_replicas": cluster.num_replicas,
        "num_gpus": cluster.num_gpus,  # every pool's, when disaggregated
        "workload": cfg.workload.name or Path(str(cfg.workload.trace or "synthetic")).stem,
        "slo_name": cfg.slo.name,
    }


def capacity_record(cfg, search: SearchConfig, outcome: CapacityResult, wall_s: float) -> dict:
    """The capacity.json content for one finished search."""
    summary = config_summary(cfg)
    at_capacity = outcome.capacity_trial
    metrics_at_capacity = at_capacity.metrics if at_capacity else {}
    num_gpus = summary["num_gpus"]
    price = cfg.hardware.price_per_hour_usd
    # Tokens served per request at capacity: the workload's mean (arrival rate x tokens = steady-state
    # token throughput), not the trial's measured throughput, which includes the drain at the end.
    prompt = metrics_at_capacity.get("mean_prompt_tokens", 0.0)
    output = metrics_at_capacity.get("mean_output_tokens", 0.0)
    search_values = {k: v for k, v in asdict(search).items() if k != "slos"}
    return {
        "summary": summary,
        "configuration": _plain(cfg),
        "search": search_values,
        "slos": slo_table(search.slos),
        "capacity_qps": outcome.capacity_qps,
        "status": outcome.status,
        "lowest_failing_qps": outcome.lowest_failing_qps,
        "num_gpus": num_gpus,
        "qps_per_gpu": outcome.capacity_qps / num_gpus,
        "price_per_gpu_hour_usd": price,
        "cost_per_million_tokens_usd": cost_per_million_tokens_usd(outcome.capacity_qps, prompt + output, num_gpus, price),
        "cost_per_million_output_tokens_usd": cost_per_million_tokens_usd(outcome.capacity_qps, output, num_gpus, price),
        "metrics_at_capacity": {k: json_number(v) for k, v in metrics_at_capacity.items()},
        "trials": [trial_to_dict(t) for t in outcome.trials],
        "search_wall_s": wall_s,
    }


def _plain(cfg) -> dict:
    """The configuration as plain JSON-ready data."""
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def write_capacity_outputs(record: dict, out_dir) -> tuple[Path, Path]:
    """Write capacity.json and capacity.md (the readable report) into `out_dir`."""
    from simulator.atomic import write_text_atomically
    from simulator.report import capacity_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "capacity.json", out_dir / "capacity.md"
    write_text_atomically(json_path, json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    write_text_atomically(md_path, capacity_markdown(record))
    return json_path, md_path


def summary_line(record: dict) -> str:
    """One line for the terminal."""
    text = (f"capacity {record['capacity_qps']:.4g} req/s ({record['qps_per_gpu']:.4g} per GPU, "
            f"{record['status']}, {len(record['trials'])} trials, {record['search_wall_s']:.1f} s)")
    if record.get("cost_per_million_tokens_usd") is not None:
        text += f", ${record['cost_per_million_tokens_usd']:.4g} per million tokens"
    return text


