"""The capacity app's configuration: the simulator's config groups plus a typed `search` group, composed
by Hydra and resolved once into a SimulationConfig and a SearchConfig."""
from __future__ import annotations

from collections.abc import Sequence

from simulator.experiments.capacity.search import SearchConfig, search_config_from

# The app's primary config: the simulator's conf/config.yaml plus the `search` group.
CAPACITY_CONFIG_NAME = "servesim_capacity"


CAPACITY_SCHEMA_NAME = "servesim_capacity_schema"
CAPACITY_JOB_NAME = "capacity"


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
    # Hydra names the job (and its log file, capacity.log) after the app's module unless told.
    store.store(name=CAPACITY_CONFIG_NAME,
                node={"defaults": [CAPACITY_SCHEMA_NAME, "config", {"search": "default"}, "_self_"],
                      "hydra": {"job": {"name": CAPACITY_JOB_NAME}}})


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


