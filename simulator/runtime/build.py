"""Building a RuntimePredictor: the FittedRuntime of (model, GPU, tp), read from the on-disk cache or
fitted and cached, then calibrated on whole iterations measured on that GPU (its own forwards, those of
another model or TP degree, or, for a GPU priced from another's tables, that GPU's calibration through
the transfer). build_predictor puts the fit, the engine profile and the communication tables together.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from simulator.config import ConfigError, HardwareConfig, ModelConfig, load_hardware_config, load_model_config
from simulator.engine import EngineProfile, load_engine_profile
from simulator.paths import PROFILES_DIR
from simulator.runtime import cache
from simulator.runtime.cpu_overhead import kernels_only, with_cpu_overhead
from simulator.runtime.fitted import FittedRuntime, code_version
from simulator.runtime.pricing import RuntimePredictor
from simulator.runtime.tables import (
    ProfileError,
    ProfileFiles,
    file_digest,
    profile_files,
    read_comm,
    read_iterations,
    read_meta,
    validation_csv,
    validation_csvs,
)
from simulator.runtime.transfer import transfer_calibration, transfer_pair, write_transferred_tables

MIN_CALIBRATION_ROWS = 10  # measured whole iterations needed to fit a calibration


def fitted_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                   cache_directory: Path | None = None, progress: bool = False,
                   attention_launch: str = "fused_varlen") -> FittedRuntime:
    """The FittedRuntime of (model, hardware, tp), calibrated for `attention_launch`: from the on-disk cache
    when it is valid, else fitted (then cached). The fit itself is cached apart from its calibration, so a
    second launch mode only recalibrates. The keys cover the profile files' bytes, the configs, tp and the
    code; the calibrated entry also the launch mode and every whole-iteration measurement of the GPU (a fit
    may borrow another model's calibration)."""
    version = code_version()
    base_key = _base_key(model, hardware, tp, files, version)
    launches = ["fused_varlen"] + ([attention_launch] if attention_launch != "fused_varlen" else [])
    measured = [path for launch in launches for path in validation_csvs(hardware, attention_launch=launch)]
    key = cache.cache_key([base_key, attention_launch,
                           *(f"{path.parent.name}/{path.name}:{file_digest([path])}" for path in measured)])
    fitted = cache.load(key, version, cache_directory)
    if fitted is not None:
        return fitted
    fitted = dataclasses.replace(uncalibrated_runtime(model, hardware, tp, files, cache_directory, progress))
    calibrated = False
    for launch in reversed(launches):  # this launch mode's own forwards first, then the fused ones
        validation = validation_csv(model, hardware, attention_launch=launch)
        if validation.exists() and calibrate(fitted, model, read_iterations(validation), launch):
            if launch != attention_launch:
                fitted.calibration_source = f"measured ({launch} forwards)"
            calibrated = True
            break
    if not calibrated:
        borrow_calibration(fitted, hardware, files, cache_directory, progress)
    _save(fitted, key, version, cache_directory)
    return fitted


def _base_key(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles, version: str) -> str:
    return cache.cache_key([
        version, file_digest([files.ops_csv, files.attention_csv, files.meta_json]),
        json.dumps(model.__dict__, sort_keys=True), json.dumps(hardware.__dict__, sort_keys=True), str(tp),
    ])


def uncalibrated_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                         cache_directory: Path | None = None, progress: bool = False) -> FittedRuntime:
    """The fit of `files`' tables alone (no calibration): from the cache when valid, else fitted and cached."""
    version = code_version()
    base_key = _base_key(model, hardware, tp, files, version)
    fitted = cache.load(base_key, version, cache_directory)
    if fitted is None:
        from simulator.runtime.fit import fit_runtime  # scikit-learn and SciPy: only when fitting

        fitted = fit_runtime(model, hardware, tp, files, progress=progress)
        _save(fitted, base_key, version, cache_directory)
    return fitted


def transferred_files(model: ModelConfig, hardware: HardwareConfig, profiles_dir: Path = PROFILES_DIR,
                      cache_directory: Path | None = None) -> ProfileFiles:
    """The profile set of `model` on `hardware` transferred from `hardware.transfer_from`'s measured tables
    (simulator/runtime/transfer.py), written under the cache directory; communication tables measured
    for `hardware` win over transferred ones. ProfileError when the source has no tables of the model;
    ConfigError naming the field when either GPU's YAML lacks a fact the transfer needs."""
    source_hw = load_hardware_config(hardware.transfer_from)
    source = profile_files(model, source_hw, profiles_dir)
    out_root = Path(cache_directory or cache.cache_dir()) / "transferred" / f"from-{source_hw.profile}"
    out_dir = out_root / hardware.profile / model.name
    measured_comm = Path(profiles_dir) / hardware.comm_profile / "comm"
    comm_dir = measured_comm if (measured_comm / "comm.csv").exists() else out_root / hardware.comm_profile / "comm"
    write_transferred_tables(source.profile_dir, source.comm_dir, out_dir, out_root / hardware.comm_profile / "comm",
                             source_hw, hardware)
    return ProfileFiles(profile_dir=out_dir, comm_dir=comm_dir)


def transferred_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                        profiles_dir: Path = PROFILES_DIR, cache_directory: Path | None = None,
                        progress: bool = False, attention_launch: str = "fused_varlen") -> FittedRuntime:
    """The FittedRuntime of `model` on `hardware` fitted to `files` (transferred_files: tables transferred
    from `hardware.transfer_from`), calibrated as that GPU's own fit of the model is (never on measured
    forwards of `hardware`: what is transferred is predicted, not fitted to the target)."""
    source_hw = load_hardware_config(hardware.transfer_from)
    fitted = uncalibrated_runtime(model, hardware, tp, files, cache_directory, progress)
    source_files = profile_files(model, source_hw, profiles_dir)
    source_fit = fitted_runtime(model, source_hw, tp, source_files, cache_directory, progress, attention_launch)
    source, target = transfer_pair(source_hw, hardware, read_meta(source_files.meta_json))  # memory ceilings
    return transfer_calibration(fitted, source_fit, source, target)


def _save(fitted: FittedRuntime, key: str, version: str, cache_directory: Path | None) -> None:
    try:
        cache.save(fitted, key, version, cache_directory)
    except OSError:
        pass  # a read-only cache directory only costs a refit next time


def borrow_calibration(fitted: FittedRuntime, hardware: HardwareConfig, files: ProfileFiles,
                       cache_directory: Path | None = None, progress: bool = False) -> None:
    """Calibrate a fit whose model and TP degree have no measured whole iterations from those measured
    on the same GPU: the same model at another TP degree (the nearest), else the mean over the other
    models. The calibration is a property of the GPU and of running a forward pass kernel after kernel
    (fit_iteration_calibration): measured, it differs by 1-2 % between models of one GPU, while none at
    all leaves every prediction about 6 % fast (docs/runtime_model.md)."""
    sources = []  # (model, tp) measured on this GPU with enough rows to calibrate
    for path in validation_csvs(hardware):
        counts = read_iterations(path)["tp"].value_counts()
        sources += [(path.parent.name, int(t)) for t, n in counts.items() if n >= MIN_CALIBRATION_ROWS]
    same_model = sorted((abs(t - fitted.tp), t) for name, t in sources if name == fitted.model_name)
    chosen = ([(fitted.model_name, same_model[0][1])] if same_model
              else sorted(s for s in sources if s[0] != fitted.model_name))
    profiles_dir = files.profile_dir.parents[1]
    scales, per_layer, used = [], [], []
    for name, tp in chosen:
        try:  # measured at this tp, the source calibrates itself: no recursion
            other = load_model_config(name)
            source = fitted_runtime(other, hardware, tp, profile_files(other, hardware, profiles_dir),
                                    cache_directory, progress)
        except ConfigError:  # measurements of a model without a config or profiles here: not a source
            continue
        scales.append(source.calibration_scale)
        per_layer.append(source.calibration_layer_ms)
        used.append(f"{name} tp={tp}")
    if used:
        fitted.calibration_scale = float(np.mean(scales))
        fitted.calibration_layer_ms = float(np.mean(per_layer))
        fitted.calibration_source = "borrowed from " + ", ".join(used)


def forward_times_ms(fitted: FittedRuntime, model: ModelConfig, iterations, engine: EngineProfile) -> np.ndarray:
    """Predicted milliseconds of each measured whole iteration (rows of read_iterations) under `engine`,
    without communication: a validation run times one TP shard's forward on one GPU (docs/profiler.md),
    and may time fewer layers than the model has (each row's num_layers)."""
    predictors: dict[int, RuntimePredictor] = {}
    predicted = np.empty(len(iterations))
    for i, row in enumerate(iterations.itertuples()):
        layers = int(row.num_layers)
        if layers not in predictors:
            predictors[layers] = RuntimePredictor(fitted, dataclasses.replace(model, num_layers=layers), 1,
                                                  engine, communication=False)
        predicted[i] = predictors[layers].stage_times_s(row.composition[:, 0], row.composition[:, 1]).sum() * 1e3
    return predicted


def kernel_sum_ms(fitted: FittedRuntime, model: ModelConfig, iterations,
                  attention_launch: str = "fused_varlen") -> np.ndarray:
    """The uncalibrated sum of kernel times of each measured whole iteration (rows of read_iterations),
    attention launched as `attention_launch`: what fit_iteration_calibration scales. No host terms and no
    graph padding: a validation run replays the forward from one CUDA graph."""
    raw = dataclasses.replace(fitted, calibration_scale=1.0, calibration_layer_ms=0.0)
    return forward_times_ms(raw, model, iterations, kernels_only(attention_launch))


def calibrate(fitted: FittedRuntime, model: ModelConfig, iterations, attention_launch: str = "fused_varlen") -> bool:
    """Set fitted's calibration from measured whole iterations of the same TP degree (their attention
    launched as `attention_launch`); False (and no change) when fewer than MIN_CALIBRATION_ROWS were
    measured."""
    from simulator.runtime.fit import fit_iteration_calibration  # SciPy: only when fitting

    rows = iterations[iterations["tp"] == fitted.tp]
    if len(rows) < MIN_CALIBRATION_ROWS:
        return False
    fitted.calibration_scale, fitted.calibration_layer_ms = fit_iteration_calibration(
        kernel_sum_ms(fitted, model, rows, attention_launch), rows["time_ms"].to_numpy(dtype=float),
        rows["num_layers"].to_numpy(dtype=float))
    fitted.calibration_rows = len(rows)
    fitted.calibration_source = "measured"
    return True


def profile_source(model: ModelConfig, hardware: HardwareConfig, profiles_dir: Path = PROFILES_DIR) -> str:
    """The GPU profile whose measured tables price `model` on `hardware`: its own where measured (a measured
    profile always wins), else `hardware.transfer_from`'s, through the transfer. Without either, the
    ProfileError naming the missing directory."""
    try:
        profile_files(model, hardware, profiles_dir)
        return hardware.profile
    except ProfileError:
        if not hardware.transfer_from:
            raise
    try:
        source_hw = load_hardware_config(hardware.transfer_from)
    except ConfigError as e:
        raise ConfigError(f"conf/hardware/{hardware.name}.yaml: transfer_from='{hardware.transfer_from}': {e}") from None
    profile_files(model, source_hw, profiles_dir)  # the source must have measured the model
    return source_hw.profile


def build_predictor(model: ModelConfig, hardware: HardwareConfig, tp: int, pp: int,
                    cpu_overhead_s: float | None = None, *, engine: EngineProfile | str = "vllm_v1",
                    profiles_dir: Path = PROFILES_DIR, cache_directory: Path | None = None,
                    progress: bool = False) -> RuntimePredictor:
    """The iteration-time predictor of `model` on `hardware` with `tp` x `pp` GPUs per replica, pricing
    batches as `engine` (an EngineProfile or a conf/engine name) launches them.

    cpu_overhead_s: None = the engine profile's host terms; seconds = that constant per iteration instead
    (and no launch floors; 0 = none). Raises ProfileError (a ConfigError) naming the missing directory or
    file when the GPU, model, TP degree, communication tables or the engine's attention mode were not
    profiled.
    """
    model.validate_tp(tp)
    if pp < 1:
        raise ConfigError(f"cluster.pp={pp} must be >= 1")
    engine = with_cpu_overhead(load_engine_profile(engine), cpu_overhead_s)
    transfer = profile_source(model, hardware, profiles_dir) != hardware.profile
    files = transferred_files(model, hardware, profiles_dir, cache_directory) if transfer \
        else profile_files(model, hardware, profiles_dir)
    if engine.attention_launch == "packed_gqa":
        raise ProfileError(
            f"engine {engine.name}: attention_launch=packed_gqa needs {files.profile_dir / 'attention_packed_gqa.csv'} "
            f"(launches of a varlen kernel that packs grouped-query heads), which was not profiled: torch exposes "
            f"no such kernel on the profiled GPUs (docs/engine_profiles.md); use attention_launch=split")
    comm_frame = read_comm(files.comm_csv) if tp > 1 or pp > 1 else None
    if transfer:
        fitted = transferred_runtime(model, hardware, tp, files, profiles_dir, cache_directory, progress,
                                     engine.attention_launch)
    else:
        fitted = fitted_runtime(model, hardware, tp, files, cache_directory, progress, engine.attention_launch)
    return RuntimePredictor(fitted, model, pp, engine, comm_frame, files.comm_csv)
