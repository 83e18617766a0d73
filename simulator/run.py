"""Run one simulation from a config: the plain Python entry point (the Hydra CLI and capacity search use it).

    from simulator.run import SimulationConfig, run_simulation
    result = run_simulation(SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "h100"}))
    result.summary["ttft_s"]["p99"], result.requests, result.iterations

`SimulationConfig` is the top-level config: one field per Hydra config group plus a few run settings.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.announce import notice_if_slow, warnings_as_notes
from simulator.config import (
    ClusterConfig,
    ConfigError,
    HardwareConfig,
    LinearPredictorConfig,
    ModelConfig,
    PolicyConfig,
    SLOConfig,
    check_number,
    from_dict,
    load_hardware_config,
    load_model_config,
)
from simulator.engine import EngineProfile, load_engine_profile
from simulator.slo import evaluate_slos, slo_objectives
from simulator.workload import WorkloadConfig, describe_source, load_workload, trace_file_name

if TYPE_CHECKING:
    import pandas as pd


PREDICTORS = ("fitted", "linear")
DEFAULT_ENGINE = "vllm_v1"  # what a user on an H100 runs today (conf/config.yaml names the same)


@dataclass
class SimulationConfig:
    """Everything one simulation needs. Groups mirror conf/ (model, hardware, engine, cluster, policy,
    workload, slo).

    engine            how the serving engine launches a batch and what its host costs (simulator/engine.py;
                      a conf/engine name or its fields); the fitted predictor prices iterations through it

    predictor         "fitted" (simulator.runtime's model fitted to GPU profiles) or "linear"
                      (simulator.linear_predictor, coefficients in `linear_predictor`)
    cpu_overhead_s    None: the engine profile's host terms; seconds: that constant per iteration instead
                      (and no launch floors; 0 = no host terms at all)
    fast_decode_runs  advance runs of decode-only iterations in one step (identical results, faster)
    output_dir        where result files go ("" = none from Python; the CLI uses Hydra's run directory)
    trace             also write trace.json, the Perfetto view of every iteration (about 80 MB for the
                      whole conversation trace, so off unless asked for)
    """

    model: ModelConfig
    hardware: HardwareConfig
    engine: EngineProfile = field(default_factory=lambda: load_engine_profile(DEFAULT_ENGINE))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    linear_predictor: LinearPredictorConfig = field(default_factory=LinearPredictorConfig)
    seed: int = 0
    predictor: str = "fitted"
    cpu_overhead_s: float | None = None
    fast_decode_runs: bool = True
    progress: bool = False
    output_dir: str = ""
    trace: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimulationConfig:
        """Build from plain mappings (e.g. a Hydra DictConfig as a container). `model` and `hardware` may
        be names of conf/ files instead of mappings. Errors name the field."""
        values = dict(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown top-level config field(s) {sorted(unknown)}")
        for name, loader, kind in (("model", load_model_config, ModelConfig),
                                   ("hardware", load_hardware_config, HardwareConfig),
                                   ("engine", load_engine_profile, EngineProfile)):
            if name not in values:
                if name == "engine":
                    continue
                raise ConfigError(f"config field '{name}' is missing")
            if isinstance(values[name], str):
                values[name] = loader(values[name])
            elif isinstance(values[name], Mapping):
                values[name] = from_dict(kind, dict(values[name]), name)
        groups = {"cluster": ClusterConfig, "policy": PolicyConfig, "workload": WorkloadConfig,
                  "slo": SLOConfig, "linear_predictor": LinearPredictorConfig}
        for name, kind in groups.items():
            if isinstance(values.get(name), Mapping):
                values[name] = from_dict(kind, dict(values[name]), name)
        return cls(**values)

    def check_run_settings(self) -> None:
        """Raise ConfigError naming the first top-level setting of the wrong type or out of range (the
        config groups check their own fields)."""
        check_number("seed", self.seed, 0, whole=True, why="it seeds numpy's random streams")
        if self.cpu_overhead_s is not None:
            check_number("cpu_overhead_s", self.cpu_overhead_s, 0,
                         why="host seconds per iteration; null = the engine profile's host terms")
        for name in ("fast_decode_runs", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected true or false")
        if not isinstance(self.output_dir, str | os.PathLike):
            raise ConfigError(f"output_dir={self.output_dir!r}: expected a directory path (\"\" = none)")
        self.linear_predictor.validate()


@dataclass
class SimulationResult:
    """One run's outcome: the summary dict, the raw records, and per-request and per-iteration tables.

    The tables are built from the records when first read: the per-request table's TBT columns sort
    every token gap (about 0.25 s per 4 million tokens), which a run that only needs its summary skips.
    """

    summary: dict
    records: Any  # simulator.metrics.RequestRecords
    iteration_records: Any  # simulator.metrics.IterationRecords

    @functools.cached_property
    def requests(self) -> pd.DataFrame:
        """simulator.metrics.request_table of the records."""
        from simulator import metrics

        return metrics.request_table(self.records)

    @functools.cached_property
    def iterations(self) -> pd.DataFrame:
        """simulator.metrics.iteration_table of the iteration records."""
        from simulator import metrics

        return metrics.iteration_table(self.iteration_records)


def as_simulation_config(cfg) -> SimulationConfig:
    """A SimulationConfig from itself, a mapping, or an OmegaConf DictConfig."""
    if isinstance(cfg, SimulationConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        from omegaconf import OmegaConf  # only DictConfig gets here; keep hydra out of plain runs

        cfg = OmegaConf.to_container(cfg, resolve=True)
    return SimulationConfig.from_dict({k: v for k, v in cfg.items() if k != "hydra"})


def policy_factory(policy: PolicyConfig, max_model_len: int | None = None):
    """A callable (kv, requests) -> policy instance.

    Raises ConfigError for an unknown name, or a parameter the policy does not declare or holds out of
    range (policies.base.check_parameters); given the model's `max_model_len`, also for one below a bound
    on the context, which the callable otherwise checks when it builds the policy.
    """
    from policies.base import check_parameters, new_policy

    kwargs = policy.policy_kwargs()
    check_parameters(policy.name, kwargs, max_model_len)
    return functools.partial(new_policy, policy.name, kwargs)


def build_predictor(cfg: SimulationConfig, progress: bool = False):
    """The iteration-time predictor every replica uses. With `progress`, fitting the runtime model (seconds
    on a first run) is announced and shows a progress bar; loading a cached fit stays silent."""
    tp, pp = cfg.cluster.tp, cfg.cluster.pp
    if cfg.predictor not in PREDICTORS:
        raise ConfigError(f"predictor='{cfg.predictor}' is not one of {', '.join(PREDICTORS)}")
    from simulator.linear_predictor import LinearPredictor

    if cfg.predictor == "fitted":
        from simulator.runtime import ProfileError
        from simulator.runtime import build_predictor as build_fitted

        fitting = (f"fitting the runtime model of {cfg.model.name} on {cfg.hardware.name} (tp={tp}) to its GPU "
                   f"profiles (first run only, cached after)")
        try:
            with notice_if_slow(fitting, enabled=progress):
                return build_fitted(cfg.model, cfg.hardware, tp, pp, cfg.cpu_overhead_s, engine=cfg.engine,
                                    progress=progress)
        except ProfileError as e:
            # Never swap in uncalibrated times silently: say what is missing and how to choose otherwise.
            raise ConfigError(f"predictor=fitted: {e}. Profile that GPU/model (docs/profiler.md) or run with "
                              f"predictor=linear (an uncalibrated roofline estimate)") from None
    return LinearPredictor.from_config(cfg.linear_predictor, cfg.model, cfg.hardware, tp, pp)


def run_simulation(cfg, out_dir: str | Path | None = None, progress: bool = False) -> SimulationResult:
    """Simulate `cfg` (SimulationConfig, mapping or DictConfig) and return its tables and summary.

    Writes result files (simulator.metrics.write_outputs) into `out_dir`, or cfg.output_dir when
    out_dir is None and that is set. The summary's `wall_s` is the only field that differs between two
    runs of the same config and seed.
    """
    from simulator.cluster import simulate
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState

    started = time.perf_counter()
    cfg = as_simulation_config(cfg)
    out_dir = check_before_running(cfg, out_dir)
    if cfg.cluster.disagg:  # prefill and decode pools: simulator/disagg
        from simulator.disagg.run import run_disaggregated

        return run_disaggregated(cfg, out_dir, progress)
    # Whatever the config can get wrong (cluster, policy, the model not fitting its GPUs, the workload)
    # is found before fitting the predictor, which takes up to a minute on a cold cache.
    cfg.cluster.validate(cfg.model)
    make_policy = policy_factory(cfg.policy, cfg.model.max_model_len)
    kv_blocks = kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster)
    workload = load_workload(cfg.workload, cfg.seed)
    notes: list[str] = []  # what building the predictor warned about, for the header (not as raw warnings)
    build_started = time.perf_counter()
    with warnings_as_notes(notes):
        predictor = build_predictor(cfg, progress=progress or cfg.progress)
    predictor_build_s = time.perf_counter() - build_started
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len)
    out = simulate(requests, make_policy, predictor, kv_blocks, block_size=cfg.cluster.block_size,
                   num_replicas=cfg.cluster.num_replicas, router=cfg.cluster.router,
                   kv_watermark=cfg.cluster.kv_watermark, seed=cfg.seed,
                   fast_decode_runs=cfg.fast_decode_runs, progress=progress or cfg.progress)
    wall_s = time.perf_counter() - started
    setup = _setup(cfg, workload.name, out.kv_blocks_per_engine, predictor) | {"notes": notes}
    return build_result(cfg, out, setup, wall_s, out_dir, {"predictor_build_s": round(predictor_build_s, 3)})


def check_before_running(cfg: SimulationConfig, out_dir: str | Path | None) -> Path | None:
    """The checks every run makes before any work, whatever its cluster kind (which then checks its own
    parts): run settings, the output directory, readied for this run's files (emptied of an earlier run's
    results: simulator.metrics.prepare_output_dir), and SLO objectives. Returns that directory: `out_dir`,
    else cfg.output_dir, else None (no files)."""
    cfg.check_run_settings()
    destination = out_dir if out_dir is not None else (cfg.output_dir or None)
    if destination is not None:
        from simulator.metrics import prepare_output_dir

        destination = prepare_output_dir(destination)
    slo_objectives(cfg.slo)
    return destination


def build_result(cfg, out, setup: dict, wall_s: float, out_dir, extra_summary: dict | None = None) -> SimulationResult:
    """Tables, summary (setup, any extra sections, SLO verdicts) and result files of a finished simulation.

    `out` is what the cluster's simulate() returned (records, iterations, simulated_s); files go to
    `out_dir`, else cfg.output_dir when set.
    """
    from simulator import metrics

    # One latency table and one pass over the token gaps serve both the summary and the SLO verdicts (the
    # SLOs read latencies and percentiles only, so neither the per-request TBT columns nor the gaps' order
    # matter to them).
    latencies = metrics.request_latencies(out.records)
    tbt_gaps_s = metrics.tbt_gaps_s(out.records)
    summary = metrics.summarize(out.records, out.iterations, out.simulated_s, wall_s,
                                latencies=latencies, tbt_gaps=tbt_gaps_s)
    summary["setup"] = setup
    summary.update(extra_summary or {})
    summary["slo"] = evaluate_slos(cfg.slo, latencies, tbt_gaps_s)
    destination = out_dir if out_dir is not None else (cfg.output_dir or None)
    if destination is not None:
        metrics.write_outputs(destination, out.records, out.iterations, summary, trace=cfg.trace)
    return SimulationResult(summary, out.records, out.iterations)


def _setup(cfg: SimulationConfig, workload_name: str, kv_blocks_per_engine: int, predictor) -> dict:
    """What was simulated, for the summary."""
    gpus_per_replica = cfg.cluster.tp * cfg.cluster.pp
    return {
        "model": cfg.model.name, "hardware": cfg.hardware.name, "num_replicas": cfg.cluster.num_replicas,
        "tp": cfg.cluster.tp, "pp": cfg.cluster.pp, "router": cfg.cluster.router,
        "gpus_per_replica": gpus_per_replica, "num_gpus": cfg.cluster.num_replicas * gpus_per_replica,
        "policy": cfg.policy.name, "policy_params": cfg.policy.policy_kwargs(), "workload": workload_name,
        "workload_source": describe_source(cfg.workload), "trace": trace_file_name(cfg.workload),
        "predictor": type(predictor).__name__, "predictor_calibration": getattr(predictor, "calibration", None),
        "predictor_description": predictor_description(cfg),
        # The fitted predictor prices iterations as this engine launches them (the linear one ignores it).
        "engine": cfg.engine.name if cfg.predictor == "fitted" else None,
        "seed": cfg.seed,
        "kv_blocks_per_engine": kv_blocks_per_engine, "kv_block_size": cfg.cluster.block_size,
    }


def predictor_description(cfg: SimulationConfig) -> str:
    """How iteration times are predicted, in words: "runtime model fitted to h100 profiles; engine
    vllm_v1: vLLM V1 (2026 releases) on Hopper" (the engine whose launches price each batch), or the
    linear formula."""
    if cfg.predictor != "fitted":
        return "linear roofline formula (uncalibrated; predictor=fitted uses the GPU profiles)"
    engine_words = cfg.engine.follows.split(":")[0].split(",")[0].strip()
    return (f"runtime model fitted to {cfg.hardware.profile} profiles; engine {cfg.engine.name}"
            + (f": {engine_words}" if engine_words else ""))
