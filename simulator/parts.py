"""The parts every cluster kind builds from a resolved configuration: the policy factory and the
iteration-time predictor of one group of identical replicas, and how that predictor is described in words.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from simulator.announce import notice_if_slow
from simulator.config import ConfigError, HardwareConfig, PolicyConfig
from simulator.engine import EngineProfile

if TYPE_CHECKING:
    from simulator.run import SimulationConfig

PREDICTORS = ("fitted", "linear")


def policy_parameters(policy: PolicyConfig, hardware: HardwareConfig | None = None,
                      engine: EngineProfile | None = None) -> dict:
    """The policy's keyword arguments: those set in the config, and for the rest, given the `hardware`
    and the `engine` profile, the policy's defaults for that GPU (vLLM V1's and SGLang's depend on it)
    and that engine (vLLM V1's scheduling a step ahead, as the engine's `async_scheduling` says)."""
    from policies.base import POLICIES

    kwargs = policy.policy_kwargs()
    cls = POLICIES.get(policy.name)
    if cls is not None and engine is not None:
        kwargs = cls.engine_defaults(engine) | kwargs
    if cls is not None and hardware is not None:
        kwargs = cls.hardware_defaults(hardware) | kwargs
    return kwargs


def effective_policy_params(policy_cfg: PolicyConfig, hardware: HardwareConfig | None = None,
                            engine: EngineProfile | None = None) -> dict:
    """The policy's parameters as it will run them: its class defaults overridden by
    `policy_parameters(policy_cfg, hardware, engine)`."""
    import inspect

    from policies import POLICIES

    defaults = {}
    cls = POLICIES.get(policy_cfg.name)
    if cls is not None:
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults[name] = parameter.default
    return defaults | policy_parameters(policy_cfg, hardware, engine)


def policy_factory(policy: PolicyConfig, max_model_len: int | None = None,
                   hardware: HardwareConfig | None = None, engine: EngineProfile | None = None):
    """A callable (kv, requests) -> policy instance, with `policy_parameters(policy, hardware, engine)`.

    Raises ConfigError for an unknown name, or a parameter the policy does not declare or holds out of
    range (policies.base.check_parameters); given the model's `max_model_len`, also for one below a bound
    on the context, which the callable otherwise checks when it builds the policy.
    """
    from policies.base import check_parameters, new_policy

    kwargs = policy_parameters(policy, hardware, engine)
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


def predictor_description(cfg: SimulationConfig) -> str:
    """How iteration times are predicted, in words: "runtime model fitted to h100 profiles; engine
    vllm_v1: vLLM V1 (2026 releases) on Hopper" (the engine whose launches price each batch), or the
    linear formula."""
    if cfg.predictor != "fitted":
        return "linear roofline formula (uncalibrated; predictor=fitted uses the GPU profiles)"
    engine_words = cfg.engine.follows.split(":")[0].split(",")[0].strip()
    return (f"runtime model fitted to {profile_words(cfg)}; engine {cfg.engine.name}"
            + (f": {engine_words}" if engine_words else ""))


def profile_words(cfg: SimulationConfig) -> str:
    """ "h100 profiles" (measured on that GPU), or "a100 kernel times transferred from h100 profiles (...)"
    with how the transfer validated where both GPUs are measured (docs/gpu_transfer.md)."""
    from simulator.paths import DATA_DIR
    from simulator.runtime import ProfileError
    from simulator.runtime.predictor import profile_source
    from simulator.runtime.transfer import validation_words

    try:
        source = profile_source(cfg.model, cfg.hardware)
    except ProfileError:
        source = cfg.hardware.profile
    if source == cfg.hardware.profile:
        return f"{source} profiles"
    validation = validation_words(cfg.hardware.transfer_from, DATA_DIR / "validation" / "gpu_transfer.json")
    return (f"{cfg.hardware.name} kernel times transferred from {cfg.hardware.transfer_from} profiles "
            f"({validation + '; ' if validation else ''}docs/gpu_transfer.md)")
