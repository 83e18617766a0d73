"""`servesim`: the simulator's Hydra app. Composes conf/config.yaml, runs one simulation, prints a summary
and writes requests/iterations/token times/summary/Perfetto trace into Hydra's run directory.

    servesim                                # llama-3-8b, one H100, Sarathi-Serve, the conversation trace
    servesim policy=vllm model=mistral-7b workload.num_requests=2000
    servesim -m policy=sarathi,vllm         # a sweep (multirun/)

The config is typed by `SimulationConfig`'s dataclasses (registered as a Hydra structured schema), so a
misspelled field or a wrong type stops before anything runs, naming the field.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import typing
from pathlib import Path

from simulator.config import ClusterConfig, ConfigError, HardwareConfig, ModelConfig
from simulator.engine import EngineProfile
from simulator.paths import CONF_DIR

APP_CONFIG_NAME = "servesim"
SCHEMA_NAME = "servesim_schema"
UNIQUE_DIR_RESOLVER = "unique_dir"  # conf/config.yaml's hydra.run.dir and hydra.sweep.dir use it

_claimed_dirs: dict[str, str] = {}  # path asked for -> directory claimed for it, in this process


def unique_dir(path: str) -> str:
    """`path`, else the first of `path_2`, `path_3`, ... that does not exist yet, created here and now.

    Two runs started in the same second ask for the same outputs/<date>/<time>; creating the directory
    is atomic, so the second finds it taken and gets its own instead of writing into the first one's.
    Hydra may resolve the interpolation more than once: a path gets one answer per process.
    """
    if path not in _claimed_dirs:
        wanted = Path(path)
        wanted.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            candidate = wanted if n == 1 else wanted.with_name(f"{wanted.name}_{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            _claimed_dirs[path] = str(candidate)
            break
    return _claimed_dirs[path]


def _hydra_schema(cls, written: dict | None = None, localns: dict | None = None):
    """A copy of config dataclass `cls` for Hydra to merge YAML and overrides into: mutable (ModelConfig and
    the like are frozen; Hydra must merge into their nodes), and with the fields in `written` ({name: (type,
    default factory)}) in the shape YAML writes them, which SimulationConfig.from_dict resolves into typed
    objects (SLOs, disaggregated pools): one parse and one set of error messages, from Python or the command
    line. `localns`: names that `cls`'s annotations use but its module imports for type checkers only."""
    from omegaconf import MISSING

    written = written or {}
    hints = typing.get_type_hints(cls, localns=localns)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in written:
            kind, factory = written[f.name]
            specs.append((f.name, kind, dataclasses.field(default_factory=factory)))
        elif f.default_factory is not dataclasses.MISSING:
            specs.append((f.name, hints[f.name], dataclasses.field(default_factory=f.default_factory)))
        else:
            default = f.default if f.default is not dataclasses.MISSING else MISSING
            specs.append((f.name, hints[f.name], dataclasses.field(default=default)))
    return dataclasses.make_dataclass(cls.__name__, specs)


def register_configs() -> None:
    """Register the structured schema, the app's primary config (schema + conf/config.yaml) and the
    `unique_dir` resolver its output directories use."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import MISSING, OmegaConf

    OmegaConf.register_new_resolver(UNIQUE_DIR_RESOLVER, unique_dir, use_cache=True, replace=True)

    from simulator.disagg.config import DisaggConfig
    from simulator.run import SimulationConfig
    from simulator.slo import SLOConfig, default_slos

    hints = typing.get_type_hints(SimulationConfig)
    required = {"model": _hydra_schema(ModelConfig), "hardware": _hydra_schema(HardwareConfig),
                "engine": _hydra_schema(EngineProfile)}
    slo_entries = lambda: [dataclasses.asdict(s) for s in default_slos()]
    written_groups = {"cluster": _hydra_schema(ClusterConfig, {"disagg": (dict, dict)}, {"DisaggConfig": DisaggConfig}),
                      "slo": _hydra_schema(SLOConfig, {"slos": (list, slo_entries)})}
    specs = []
    for f in dataclasses.fields(SimulationConfig):
        if f.name in required:
            specs.append((f.name, required[f.name], dataclasses.field(default=MISSING)))
        elif f.name in written_groups:
            schema = written_groups[f.name]
            specs.append((f.name, schema, dataclasses.field(default_factory=schema)))
        elif f.default_factory is not dataclasses.MISSING:
            specs.append((f.name, hints[f.name], dataclasses.field(default_factory=f.default_factory)))
        else:
            specs.append((f.name, hints[f.name], dataclasses.field(default=f.default)))
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=dataclasses.make_dataclass("SimulationSchema", specs))
    # conf/hydra/help/servesim.yaml: `servesim --help` says what servesim does, instead of Hydra's generic text.
    store.store(name=APP_CONFIG_NAME,
                node={"defaults": [SCHEMA_NAME, "config", {"override hydra/help": "servesim"}, "_self_"]})


def config_from_hydra(cfg):
    """SimulationConfig from a composed DictConfig (the `hydra` node dropped)."""
    from omegaconf import OmegaConf

    from simulator.run import SimulationConfig

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return SimulationConfig.from_dict(container)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from simulator.metrics import prepare_output_dir
    from simulator.run import run_simulation

    register_configs()

    @hydra.main(config_path=str(CONF_DIR), config_name=APP_CONFIG_NAME, version_base=None)
    def app(cfg) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            prepare_output_dir(out_dir)  # Hydra has just written this run's config there: no older results
            simulation = config_from_hydra(cfg)
            out_dir = Path(simulation.output_dir) if simulation.output_dir else out_dir
            result = run_simulation(simulation, out_dir=out_dir, progress=simulation.progress)
        except ConfigError as e:
            print(f"servesim: {e}", file=sys.stderr)
            sys.exit(2)
        print(describe(result.summary))
        print(f"results: {out_dir}")

    app()


def describe(summary: dict) -> str:
    """The terminal report: what ran, the metrics table, the SLO verdicts, and notes on what stands out."""
    from simulator.metrics import format_summary, load_notes
    from simulator.run_header import setup_lines

    slo = summary["slo"]
    verdicts = []
    for o in slo["objectives"]:
        measured = "-" if o["measured_s"] is None else f"{o['measured_s']:.4g} s"
        verdicts.append(f"  {'met ' if o['met'] else 'MISS'} {o['name']} (measured {measured})")
    extra = []
    if "disaggregation" in summary:  # a prefill/decode-pool run (simulator/disagg)
        from simulator.disagg.metrics import format_disaggregation

        extra = ["", format_disaggregation(summary["disaggregation"])]
    notes = [f"note: {note}" for note in load_notes(summary)]  # e.g. why the SLOs were missed
    return "\n".join([*setup_lines(summary["setup"]), "", format_summary(summary), *extra, "",
                      f"SLO '{slo['name']}': {'all met' if slo['all_met'] else 'NOT met'}", *verdicts,
                      *([""] + notes if notes else [])])


if __name__ == "__main__":
    main()
