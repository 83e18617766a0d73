"""The fitted runtime model's predictor, by idea:

  token_tables.py  what an iteration's token-wise ops, communication and LM head cost by token count
  pricing.py       RuntimePredictor: one batch's (or one decode run's) time per pipeline stage, and its
                   breakdown by op category
  build.py         the fit of (model, GPU, tp) from the cache or fitted, its calibration, build_predictor
  this module      predict_batch, one batch priced from config names; every public name of the three
                   modules above is importable from here as well
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.config import (
    ConfigError,
    HardwareConfig,
    ModelConfig,
    from_dict,
    load_hardware_config,
    load_model_config,
)
from simulator.engine import EngineProfile, load_engine_profile
from simulator.runtime.build import (  # noqa: F401 - re-exported
    MIN_CALIBRATION_ROWS,
    borrow_calibration,
    build_predictor,
    calibrate,
    fitted_runtime,
    forward_times_ms,
    kernel_sum_ms,
    profile_source,
    transferred_files,
    transferred_runtime,
    uncalibrated_runtime,
)
from simulator.runtime.pricing import BREAKDOWN_KEYS, Breakdown, RuntimePredictor  # noqa: F401 - re-exported
from simulator.runtime.token_tables import (  # noqa: F401 - re-exported
    LAYER_OTHER_OPS,
    LINEAR_OPS,
    TokenTable,
    layers_per_stage,
    op_tables,
)


def _config(cls, loader, name_or_path: str):
    """A conf/ name (llama-3-8b, h100) or the path of a YAML file with the dataclass's fields."""
    if str(name_or_path).endswith((".yaml", ".yml")):
        import yaml

        path = Path(name_or_path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return from_dict(cls, yaml.safe_load(path.read_text()) or {}, str(path))
    return loader(name_or_path)


def predict_batch(model: str, hardware: str, batch, tp: int = 1, pp: int = 1,
                  cpu_overhead_ms: float | None = None, engine: str = "vllm_v1", **kwargs) -> Breakdown:
    """Predict one batch by config names, e.g. predict_batch("llama-2-7b", "h100", [[4096, 0], [1, 1024]]).

    model, hardware, engine: conf/ names, or paths of YAML files with the config's fields.
    batch: [[q_tokens, kv_tokens], ...] per sequence. cpu_overhead_ms: None = the engine's host terms,
    0 = none.
    Returns a Breakdown (milliseconds).
    """
    pairs = np.asarray(batch, dtype=np.int64) if np.ndim(batch) == 2 else np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or (pairs[:, 0] < 1).any() or (pairs[:, 1] < 0).any():
        raise ValueError(f"batch must be a non-empty list of [q_tokens >= 1, kv_tokens >= 0], got {batch!r}")
    predictor = build_predictor(
        _config(ModelConfig, load_model_config, model), _config(HardwareConfig, load_hardware_config, hardware), tp, pp,
        None if cpu_overhead_ms is None else cpu_overhead_ms / 1e3,
        engine=_config(EngineProfile, load_engine_profile, engine), **kwargs,
    )
    return predictor.breakdown(pairs[:, 0], pairs[:, 1])
