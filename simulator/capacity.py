"""SLO capacity search: the highest request rate (QPS) at which one configuration meets its SLOs.

The search is a bracketing search over the arrival rate. Starting from `initial_rate_qps` it grows the
rate geometrically until a trial fails (or shrinks it until one passes), then bisects between the
highest passing and the lowest failing rate until they are within `tolerance` (relative) of each
other. Every trial replays the same requests (same seed) at a different rate, so the only thing that
changes between trials is the load; that keeps the feasible region monotone in practice.

A trial passes when every SLO holds on the measured requests (warm-up and cool-down trimmed) and no
more than `max_rejected_fraction` of them were rejected. A bound on the scheduling (queueing) delay
belongs in every SLO set: an overloaded queue grows without limit, and without that bound a short
trial could still look fine on per-token metrics.

The search and SLO evaluation are pure functions of an `evaluate(rate) -> Trial` callable and of
result tables; `run_capacity_search` wires them to the simulator, and `main` is the Hydra app
`servesim-capacity`.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulator.slo import SLO, measured_requests, slo_table, slos_from_config, trial_metrics

if TYPE_CHECKING:
    from simulator.metrics import RequestTable  # a trial's requests: columns or a DataFrame

class SearchError(ValueError):
    """A search setting is wrong; the message names the field."""


@dataclass
class SearchConfig:
    """Settings of one capacity search: the `search` config group's fields, plus the objectives, which
    the apps take from the `slo` group (`search_config_from`); the default here is for direct use."""

    slos: list[SLO] = field(
        default_factory=lambda: [
            SLO("tbt_s", 99, 0.1),
            SLO("ttft_s", 90, 2.0),
            SLO("queueing_delay_s", 99, 5.0),
        ]
    )
    num_requests: int = 2048  # requests simulated per trial (before trimming)
    warmup_fraction: float = 0.1  # share of requests (by arrival order) left out at the start
    cooldown_fraction: float = 0.1  # share left out at the end, when the queue drains
    # Rejected measured requests tolerated in a passing trial. The simulator rejects only requests that
    # can never fit (prompt + output > max_model_len), whatever the load, so this guards against a
    # workload that does not suit the model rather than against overload; reports always show the share.
    max_rejected_fraction: float = 0.1
    initial_rate_qps: float = 1.0
    min_rate_qps: float = 0.01  # below this the configuration is called infeasible at any rate
    max_rate_qps: float = 1000.0  # above this the search stops and reports the limit
    growth_factor: float = 2.0  # rate multiplier while bracketing
    tolerance: float = 0.02  # stop when (fail - pass) / pass <= tolerance
    max_trials: int = 30
    write_capacity_run: bool = True  # also write the result files of the trial at capacity (for plots)

    def __post_init__(self) -> None:
        self.slos = [s if isinstance(s, SLO) else SLO(**dict(s)) for s in self.slos]
        self.validate()

    def validate(self) -> None:
        """Raise SearchError naming the first wrong field."""
        checks = [
            (self.num_requests >= 10, f"search.num_requests={self.num_requests} must be at least 10"),
            (0 <= self.warmup_fraction < 1, f"search.warmup_fraction={self.warmup_fraction} not in [0, 1)"),
            (0 <= self.cooldown_fraction < 1, f"search.cooldown_fraction={self.cooldown_fraction} not in [0, 1)"),
            (
                self.warmup_fraction + self.cooldown_fraction < 0.9,
                "search.warmup_fraction + search.cooldown_fraction must leave at least 10% of requests",
            ),
            (0 <= self.max_rejected_fraction <= 1, "search.max_rejected_fraction must be in [0, 1]"),
            (0 < self.min_rate_qps, f"search.min_rate_qps={self.min_rate_qps} must be positive"),
            (
                self.min_rate_qps <= self.initial_rate_qps <= self.max_rate_qps,
                "search.initial_rate_qps must lie in [search.min_rate_qps, search.max_rate_qps]",
            ),
            (self.growth_factor > 1, f"search.growth_factor={self.growth_factor} must exceed 1"),
            (0 < self.tolerance < 1, f"search.tolerance={self.tolerance} must be in (0, 1)"),
            (self.max_trials >= 2, f"search.max_trials={self.max_trials} must be at least 2"),
            (len(self.slos) > 0, "search.slos is empty: a capacity needs at least one SLO"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(message)


@dataclass
class Trial:
    """One simulated rate: whether the SLOs held, and the measured metrics (seconds)."""

    rate_qps: float
    feasible: bool
    metrics: dict = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    error: str = ""


@dataclass
class CapacityResult:
    """Outcome of a search. `status` is one of:
    converged            pass and fail rates within tolerance; capacity_qps is the highest passing rate
    feasible_at_max_rate the SLOs held at max_rate_qps; capacity_qps is that bound (a lower bound)
    infeasible           the SLOs failed even at min_rate_qps; capacity_qps is 0
    max_trials           stopped by max_trials before reaching the tolerance; capacity_qps is a lower bound
    """

    capacity_qps: float
    status: str
    trials: list[Trial]
    lowest_failing_qps: float | None

    @property
    def capacity_trial(self) -> Trial | None:
        """The trial run at the reported capacity, if any passed."""
        passing = [t for t in self.trials if t.feasible and t.rate_qps == self.capacity_qps]
        return passing[-1] if passing else None


def check_slos(measured: RequestTable, tbt_gaps_s: np.ndarray, search: SearchConfig) -> tuple[dict, list[str]]:
    """Metrics of one trial and the list of violated objectives (empty when the trial passes)."""
    metrics = trial_metrics(measured, tbt_gaps_s, search.slos)
    violations = []
    if metrics["num_measured"] == 0:
        violations.append("no measured requests")
    if metrics["rejected_fraction"] > search.max_rejected_fraction:
        violations.append(
            f"rejected {metrics['rejected_fraction']:.1%} > {search.max_rejected_fraction:.1%} of requests"
        )
    for slo in search.slos:
        value = metrics.get(f"{slo.metric}_p{slo.percentile:g}", float("nan"))
        if not value <= slo.max_s:  # NaN (no values at all, or a missing column) fails too
            violations.append(f"{slo.name} (measured {value:.4g} s)")
    return metrics, violations


# --- the search itself (pure: any `evaluate(rate) -> Trial` will do) -------------------------------


def search_capacity(
    evaluate: Callable[[float], Trial],
    search: SearchConfig,
    on_trial: Callable[[Trial], None] | None = None,
) -> CapacityResult:
    """Find the highest rate whose trial passes, to `search.tolerance`.

    `evaluate(rate_qps)` runs one trial. Trials are assumed monotone in rate (pass below the capacity,
    fail above); the search never re-runs a rate. `on_trial` is called after each trial (progress).
    """
    trials: list[Trial] = []

    def run(rate_qps: float) -> bool:
        start = time.perf_counter()
        trial = evaluate(rate_qps)
        trial.wall_s = trial.wall_s or time.perf_counter() - start
        trials.append(trial)
        if on_trial:
            on_trial(trial)
        return trial.feasible

    rate = search.initial_rate_qps
    highest_pass: float | None = None
    lowest_fail: float | None = None
    if run(rate):
        highest_pass = rate
        while lowest_fail is None:
            if highest_pass >= search.max_rate_qps:
                return CapacityResult(highest_pass, "feasible_at_max_rate", trials, None)
            if len(trials) >= search.max_trials:
                return CapacityResult(highest_pass, "max_trials", trials, None)
            rate = min(highest_pass * search.growth_factor, search.max_rate_qps)
            if run(rate):
                highest_pass = rate
            else:
                lowest_fail = rate
    else:
        lowest_fail = rate
        while highest_pass is None:
            if lowest_fail <= search.min_rate_qps:
                return CapacityResult(0.0, "infeasible", trials, lowest_fail)
            if len(trials) >= search.max_trials:
                return CapacityResult(0.0, "max_trials", trials, lowest_fail)
            rate = max(lowest_fail / search.growth_factor, search.min_rate_qps)
            if run(rate):
                highest_pass = rate
            else:
                lowest_fail = rate

    while (lowest_fail - highest_pass) > search.tolerance * highest_pass:
        if len(trials) >= search.max_trials:
            return CapacityResult(highest_pass, "max_trials", trials, lowest_fail)
        rate = 0.5 * (highest_pass + lowest_fail)
        if run(rate):
            highest_pass = rate
        else:
            lowest_fail = rate
    return CapacityResult(highest_pass, "converged", trials, lowest_fail)


# --- derived economics ---------------------------------------------------------------------------


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
    record["metrics"] = {k: _json_number(v) for k, v in trial.metrics.items()}
    return record


def _json_number(value):
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
        row[key] = _number_from_json(value)
    return row


def trial_rows(record: dict) -> list[dict]:
    """One flat row per trial of a capacity.json record, with the configuration's summary fields."""
    config = {k: record["summary"].get(k) for k in SUMMARY_FIELDS}
    rows = []
    for trial in record["trials"]:
        rows.append({**config, "rate_qps": trial["rate_qps"], "feasible": trial["feasible"],
                     "wall_s": trial.get("wall_s"), "violations": "; ".join(trial.get("violations", [])),
                     **{k: _number_from_json(v) for k, v in trial["metrics"].items()}})
    return rows


def _number_from_json(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


# --- wiring to the simulator ----------------------------------------------------------------------


def search_config_from(values: dict | None, slos: Sequence) -> SearchConfig:
    """SearchConfig from the `search` config group's values and the `slo` group's objectives;
    errors name the field."""
    values = dict(values or {})
    known = {f for f in SearchConfig.__dataclass_fields__ if f != "slos"}
    unknown = set(values) - known
    if unknown:
        raise SearchError(f"unknown search field(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return SearchConfig(**values, slos=slos_from_config(slos))


def native_rate_qps(cfg) -> float | None:
    """Requests per second of a trace replayed as recorded (rate_scale 1), over the requests a trial
    uses; None for synthetic arrivals."""
    import dataclasses

    from simulator.workload import load_workload

    if cfg.workload.arrival != "trace":
        return None
    workload = load_workload(dataclasses.replace(cfg.workload, rate_scale=1.0), cfg.seed)
    span_s = float(workload.arrived_s[-1] - workload.arrived_s[0])
    if len(workload) < 2 or span_s <= 0:
        raise SearchError(f"workload {workload.name}: its first {len(workload)} arrivals span no time; "
                          "a capacity search needs arrivals spread in time")
    return (len(workload) - 1) / span_s


def with_rate(cfg, rate_qps: float, num_requests: int, trace_rate_qps: float | None):
    """A copy of `cfg` (SimulationConfig) whose workload offers `rate_qps` with `num_requests` requests.

    Synthetic arrivals take the rate directly; a trace keeps its recorded arrival pattern, compressed
    or stretched (rate_scale) so its mean rate is `rate_qps`. This is the only place the search
    touches the workload config.
    """
    import dataclasses

    if cfg.workload.arrival == "trace":
        workload = dataclasses.replace(cfg.workload, rate_scale=rate_qps / trace_rate_qps, num_requests=num_requests)
    else:
        workload = dataclasses.replace(cfg.workload, rate_qps=rate_qps, num_requests=num_requests)
    return dataclasses.replace(cfg, workload=workload, output_dir="", progress=False)


def effective_policy_params(policy_cfg) -> dict:
    """The policy's parameters as it will run them: its class defaults overridden by the config."""
    import inspect

    from policies import POLICIES

    defaults = {}
    cls = POLICIES.get(policy_cfg.name)
    if cls is not None:
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults[name] = parameter.default
    return defaults | policy_cfg.policy_kwargs()


def config_summary(cfg) -> dict:
    """The fields that name a configuration in tables and plots (see SUMMARY_FIELDS)."""
    params = effective_policy_params(cfg.policy)
    cluster = cfg.cluster
    return {
        "model": cfg.model.name, "hardware": cfg.hardware.name, "policy": cfg.policy.name,
        "chunk_size": params.get("chunk_size"),
        # The batch cap under whichever name the policy uses (vLLM calls it max_num_seqs).
        "max_batch_size": params.get("max_batch_size", params.get("max_num_seqs")),
        "tp": cluster.tp, "pp": cluster.pp, "num_replicas": cluster.num_replicas,
        "num_gpus": cluster.num_replicas * cluster.tp * cluster.pp,
        "workload": cfg.workload.name or Path(str(cfg.workload.trace or "synthetic")).stem,
        "slo_name": cfg.slo.name,
    }


TRIALS_JOURNAL = "trials.jsonl"


def read_trial_journal(path: Path, fingerprint: str) -> dict[float, Trial]:
    """The trials a journal holds for inputs `fingerprint`, by rate. Lines of other inputs, and a line
    torn by a kill, are ignored: those trials simply run again."""
    trials = {}
    if not Path(path).exists():
        return trials
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("fingerprint") == fingerprint:
            trial = entry["trial"]
            trial["metrics"] = {k: _number_from_json(v) for k, v in trial["metrics"].items()}
            trials[trial["rate_qps"]] = Trial(**trial)
    return trials


def append_trial(path: Path, fingerprint: str, trial: Trial) -> None:
    """Add one finished trial to the journal as a JSON line, on disk before returning."""
    line = json.dumps({"fingerprint": fingerprint, "trial": trial_to_dict(trial)}) + "\n"
    path = Path(path)
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        line = "\n" + line  # after a line torn by a kill
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def run_capacity_search(cfg, search: SearchConfig, progress: bool = True, capacity_run_dir=None,
                        trials_journal=None) -> dict:
    """Search the capacity of `cfg` (SimulationConfig or anything run_simulation accepts) and return
    the capacity.json record. With `capacity_run_dir`, the result files of the trial at capacity
    (requests, token times, iterations, summary; the Perfetto trace with `trace=true`) are written there
    for plotting. With `trials_journal` (a trials.jsonl path), each finished trial is appended there, and
    trials it already holds for the same inputs (simulator.provenance.point_fingerprint) are reused, not
    simulated again: an interrupted search resumes trial by trial.
    """
    from tqdm import tqdm

    from simulator import metrics
    from simulator.provenance import point_fingerprint
    from simulator.run import as_simulation_config, run_simulation

    started = time.perf_counter()
    cfg = as_simulation_config(cfg)
    cfg.cluster.validate(cfg.model)
    trace_rate = native_rate_qps(cfg)
    best = {}  # the highest passing trial's raw result, kept to write its files
    fingerprint = point_fingerprint(cfg, search) if trials_journal is not None else ""
    journaled = read_trial_journal(trials_journal, fingerprint) if trials_journal is not None else {}

    def evaluate(rate_qps: float) -> Trial:
        if rate_qps in journaled:
            return journaled[rate_qps]
        trial = simulate(rate_qps)
        if trials_journal is not None:
            append_trial(trials_journal, fingerprint, trial)
        return trial

    def simulate(rate_qps: float) -> Trial:
        result = run_simulation(with_rate(cfg, rate_qps, search.num_requests, trace_rate))
        # The SLOs read latencies only: the requests' columns serve, without per-request TBT or pandas.
        requests = metrics.request_latencies(result.records)
        measured = measured_requests(requests, search.warmup_fraction, search.cooldown_fraction)
        gaps = metrics.tbt_gaps_s(result.records, measured["request_id"])
        trial_values, violations = check_slos(measured, gaps, search)
        summary = result.summary
        trial_values.update({
            "throughput_rps": summary.get("throughput_rps"), "output_tokens_per_s": summary.get("output_tokens_per_s"),
            "preemptions": summary.get("preemptions"), "simulated_s": summary.get("simulated_s"),
            "mean_prompt_tokens": float(requests["prompt_tokens"].mean()),
            "mean_output_tokens": float(requests["output_tokens"].mean()),
        })
        feasible = not violations
        if feasible and rate_qps >= best.get("rate_qps", -1.0):
            best.update(rate_qps=rate_qps, result=result)
        return Trial(rate_qps=rate_qps, feasible=feasible, metrics=trial_values, violations=violations)

    bar = tqdm(desc=f"capacity {cfg.policy.name}", unit="trial", disable=not progress, leave=False)

    def on_trial(trial: Trial) -> None:
        bar.update(1)
        bar.set_postfix(rate=f"{trial.rate_qps:.3g}", met="yes" if trial.feasible else "no")

    try:
        outcome = search_capacity(evaluate, search, on_trial)
    finally:
        bar.close()  # also on Ctrl-C, so the message after it starts on a clean line
    at_capacity = outcome.capacity_trial
    if capacity_run_dir is not None and at_capacity and best.get("rate_qps") != at_capacity.rate_qps:
        simulate(at_capacity.rate_qps)  # that trial came from the journal: rerun it for its files
    if capacity_run_dir is not None and "result" in best:
        result = best["result"]
        metrics.write_outputs(capacity_run_dir, result.records, result.iteration_records, result.summary,
                              trace=cfg.trace)
    return capacity_record(cfg, search, outcome, time.perf_counter() - started)


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
        "metrics_at_capacity": {k: _json_number(v) for k, v in metrics_at_capacity.items()},
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


# --- the Hydra app: servesim-capacity ---------------------------------------------------------------

# The app's primary config: the simulator's conf/config.yaml plus the `search` group.
CAPACITY_CONFIG_NAME = "servesim_capacity"


CAPACITY_SCHEMA_NAME = "servesim_capacity_schema"


def register_capacity_config() -> None:
    """Register the primary config with Hydra's ConfigStore: the simulator's typed schema extended by a
    typed `search` node, then conf/config.yaml and conf/search/default.yaml. A misspelled or mistyped
    field stops composition, naming the field."""
    import dataclasses
    import typing

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from simulator.cli import SCHEMA_NAME, register_configs

    register_configs()
    store = ConfigStore.instance()
    simulation_schema = OmegaConf.get_type(store.load(f"{SCHEMA_NAME}.yaml").node)
    hints = typing.get_type_hints(SearchConfig)
    search_schema = dataclasses.make_dataclass("SearchSchema", [
        (f.name, hints[f.name], dataclasses.field(default=f.default))
        for f in dataclasses.fields(SearchConfig) if f.name != "slos"])  # objectives come from the slo group
    capacity_schema = dataclasses.make_dataclass(
        "CapacitySchema", [("search", search_schema, dataclasses.field(default_factory=search_schema))],
        bases=(simulation_schema,))
    store.store(name=CAPACITY_SCHEMA_NAME, node=capacity_schema)
    store.store(name=CAPACITY_CONFIG_NAME,
                node={"defaults": [CAPACITY_SCHEMA_NAME, "config", {"search": "default"}, "_self_"]})


def split_hydra_config(cfg) -> tuple:
    """(SimulationConfig, SearchConfig) from a composed capacity config (DictConfig or mapping)."""
    from omegaconf import DictConfig, OmegaConf

    from simulator.run import as_simulation_config

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    search_values = container.pop("search", None) or {}
    container.pop("hydra", None)
    simulation = as_simulation_config(container)
    return simulation, search_config_from(search_values, simulation.slo.slos)


def compose_capacity_config(overrides: Sequence[str]) -> tuple:
    """Compose the capacity app's config with Hydra overrides, outside a Hydra app (sweeps, tests)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from simulator.paths import CONF_DIR

    global _hydra_ready
    if not (_hydra_ready and GlobalHydra.instance().is_initialized()):
        # Initialise once per process and keep it: a fresh initialisation per point costs ~0.15 s.
        register_capacity_config()
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name="servesim-capacity")
        _hydra_ready = True
    cfg = compose(config_name=CAPACITY_CONFIG_NAME, overrides=list(overrides))
    return split_hydra_config(cfg)


_hydra_ready = False  # compose_capacity_config initialised Hydra in this process


def summary_line(record: dict) -> str:
    """One line for the terminal."""
    text = (f"capacity {record['capacity_qps']:.4g} req/s ({record['qps_per_gpu']:.4g} per GPU, "
            f"{record['status']}, {len(record['trials'])} trials, {record['search_wall_s']:.1f} s)")
    if record.get("cost_per_million_tokens_usd") is not None:
        text += f", ${record['cost_per_million_tokens_usd']:.4g} per million tokens"
    return text


def main() -> None:
    """servesim-capacity: the simulator's config groups plus `search`; writes capacity.json and
    capacity.md (and capacity_run/ with the files of the trial at capacity) to Hydra's output dir."""
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from simulator.config import ConfigError
    from simulator.paths import CONF_DIR

    register_capacity_config()

    @hydra.main(config_path=str(CONF_DIR), config_name=CAPACITY_CONFIG_NAME, version_base=None)
    def app(cfg) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        journal = out_dir / TRIALS_JOURNAL
        try:
            simulation, search = split_hydra_config(cfg)
            run_dir = out_dir / "capacity_run" if search.write_capacity_run else None
            record = run_capacity_search(simulation, search, progress=True, capacity_run_dir=run_dir,
                                         trials_journal=journal)
        except (ConfigError, SearchError) as e:  # SLOError is a ConfigError
            print(f"servesim-capacity: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"servesim-capacity: interrupted; the finished trials are kept in {journal}. Run the same "
                  f"command with hydra.run.dir={out_dir} to resume from them.", file=sys.stderr)
            sys.exit(130)
        json_path, md_path = write_capacity_outputs(record, out_dir)
        print(f"{config_summary(simulation)['policy']}: {summary_line(record)}\n  {json_path}\n  {md_path}")

    app()


if __name__ == "__main__":
    main()
