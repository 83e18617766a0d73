"""What a fit produces, without the fitting: `FittedRuntime` (arrays only) and its scores.

Kept apart from simulator/runtime/fit.py so that a simulation whose fit is cached imports neither
scikit-learn nor SciPy (about a second of start-up on the development machine).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.runtime import features as F

# Token grid the op times are tabulated on: every count up to GRID_DENSE_TOKENS, then log-spaced.
GRID_DENSE_TOKENS = 32768
GRID_MAX_TOKENS = 1 << 22

# Error targets of issue 4 (held-out absolute percentage error); families are ranked by how far
# they are from them: score = max(median / 3 %, p95 / 10 %).
TARGET_MEDIAN_PCT = 3.0
TARGET_P95_PCT = 10.0

# Files whose code determines a cached fit (the calibration is computed through the predictor); their
# bytes are part of the cache key.
_CODE_FILES = ("features.py", "model.py", "fit.py", "fitted.py", "tables.py", "token_tables.py", "pricing.py",
               "build.py", "attention_time.py", "decode_attention.py", "transfer.py")


def code_version() -> str:
    """sha256 of the fitting code, so a cache written by other code is never reused."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _CODE_FILES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class FamilyScore:
    """Held-out accuracy of one family on one op."""

    median_pct: float
    p95_pct: float
    num_points: int

    @property
    def score(self) -> float:
        return max(self.median_pct / TARGET_MEDIAN_PCT, self.p95_pct / TARGET_P95_PCT)


@dataclass
class FittedRuntime:
    """Everything the predictor needs, as arrays: the fitted model of one (model, GPU, tp)."""

    model_name: str
    hardware_profile: str
    tp: int
    grid_tokens: np.ndarray  # (G,) token counts
    op_ms: dict[str, np.ndarray]  # op name -> (G,) predicted ms of one launch at each grid count
    attention_family: str
    attention_coef: np.ndarray  # (1 + branches, features): time_ms = a.x + max_g(b_g.x)
    attention_trees: dict[str, np.ndarray] | None  # oblivious-tree arrays, or None (linear only)
    attention_q_heads: int
    attention_kv_heads: int
    attention_block_m: int
    num_sms: int
    # The model of decode-only launches when fitted apart (attention_* above then covers the launches
    # with a prefill chunk); None: attention_* covers every launch.
    decode_attention_family: str = ""
    decode_attention_coef: np.ndarray | None = None
    decode_attention_trees: dict[str, np.ndarray] | None = None
    # measured whole iteration ~= calibration_scale x (sum of kernel times) + calibration_layer_ms x layers
    # (see fit_iteration_calibration); 1 and 0 when no iterations were measured.
    calibration_scale: float = 1.0
    calibration_layer_ms: float = 0.0
    calibration_rows: int = 0
    # Where the calibration comes from: "" (none), "measured" (this model and TP degree), or "borrowed from
    # <model> tp=<n>, ..." (none measured here: predictor.borrow_calibration).
    calibration_source: str = ""
    # The profiled GPU whose tables were transferred to this one (simulator/runtime/transfer.py); "" when
    # the tables were measured on this GPU.
    transferred_from: str = ""
    chosen: dict[str, str] = field(default_factory=dict)  # op -> family kept
    scores: dict[str, dict[str, FamilyScore]] = field(default_factory=dict)  # op -> family -> score
    fit_seconds: float = 0.0

    def attention_shape(self) -> F.AttentionShape:
        return F.AttentionShape(q_heads=self.attention_q_heads, kv_heads=self.attention_kv_heads,
                                block_m=self.attention_block_m, num_sms=self.num_sms)
