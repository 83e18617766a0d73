"""Run one simulation from a config: the plain Python entry point (the Hydra CLI and capacity search use it).

    from simulator.run import SimulationConfig, run_simulation
    result = run_simulation(SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "h100"}))
    result.summary["ttft_s"]["p99"], result.requests, result.iterations

`SimulationConfig` is the top-level config: one field per Hydra config group plus a few run settings.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.config import (
    ClusterConfig,
    ConfigError,
    HardwareConfig,
    LinearPredictorConfig,
    ModelConfig,
    PolicyConfig,
    check_number,
    from_dict,
    load_hardware_config,
    load_model_config,
)
from simulator.disagg.config import resolve_disagg
from simulator.engine import EngineProfile, load_engine_profile
from simulator.parts import PREDICTORS, build_predictor, policy_factory, predictor_description  # noqa: F401 - re-exported
from simulator.result import SimulationResult, build_result  # noqa: F401 - re-exported
from simulator.slo import SLOConfig
from simulator.workload import WorkloadConfig

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
        be names of conf/ files instead of mappings. This is where a configuration is resolved, once: the
        SLOs become simulator.slo.SLO objects and a disaggregated cluster's pools a validated DisaggConfig.
        Errors name the field."""
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
        groups = {"policy": PolicyConfig, "workload": WorkloadConfig, "slo": SLOConfig,
                  "linear_predictor": LinearPredictorConfig}
        for name, kind in groups.items():
            if isinstance(values.get(name), Mapping):
                values[name] = from_dict(kind, dict(values[name]), name)
        if isinstance(values.get("cluster"), Mapping):
            values["cluster"] = cluster_from_dict(values["cluster"], values["model"], values["hardware"])
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


def cluster_from_dict(values: Mapping, model: ModelConfig, hardware: HardwareConfig) -> ClusterConfig:
    """The `cluster` group from its mapping, its disaggregated pools (`disagg`, empty for a colocated
    cluster) parsed and validated against `model` here, once: the runs and experiments built on the
    resulting SimulationConfig use them as they are."""
    values = dict(values)
    disagg = values.pop("disagg", None)
    cluster = from_dict(ClusterConfig, values, "cluster")
    cluster.disagg = resolve_disagg(disagg, model, hardware)
    return cluster


def as_simulation_config(cfg) -> SimulationConfig:
    """A SimulationConfig from itself, a mapping, or an OmegaConf DictConfig."""
    if isinstance(cfg, SimulationConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        from omegaconf import OmegaConf  # only DictConfig gets here; keep hydra out of plain runs

        cfg = OmegaConf.to_container(cfg, resolve=True)
    return SimulationConfig.from_dict({k: v for k, v in cfg.items() if k != "hydra"})


def run_simulation(cfg, out_dir: str | Path | None = None, progress: bool = False) -> SimulationResult:
    """Simulate `cfg` (SimulationConfig, mapping or DictConfig) and return its tables and summary.

    A SimulationConfig is taken as resolved and used as given, not parsed again: the run checks its settings
    (check_before_running) and its cluster kind builds the parts. Experiments (simulator/experiments/)
    resolve one configuration and derive each run's from it with dataclasses.replace.

    Writes result files (simulator.metrics.write_outputs) into `out_dir`, or cfg.output_dir when
    out_dir is None and that is set. The summary's `wall_s` is the only field that differs between two
    runs of the same config and seed. The cluster kind (colocated, disaggregated) is chosen from the
    configuration by simulator.cluster_kinds.
    """
    from simulator.cluster_kinds import cluster_kind

    started = time.perf_counter()
    cfg = as_simulation_config(cfg)
    out_dir = check_before_running(cfg, out_dir)
    return cluster_kind(cfg)(cfg, out_dir, progress, started)


def check_before_running(cfg: SimulationConfig, out_dir: str | Path | None) -> Path | None:
    """The checks every run makes before any work, whatever its cluster kind (which then checks its own
    parts): run settings and the output directory, readied for this run's files (emptied of an earlier
    run's results: simulator.metrics.prepare_output_dir). The SLOs were checked when cfg.slo was built
    (simulator.slo.SLOConfig). Returns that directory: `out_dir`, else cfg.output_dir, else None (no
    files)."""
    cfg.check_run_settings()
    destination = out_dir if out_dir is not None else (cfg.output_dir or None)
    if destination is not None:
        from simulator.metrics import prepare_output_dir

        destination = prepare_output_dir(destination)
    return destination


