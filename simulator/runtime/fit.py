"""Fit the runtime model of one (model, GPU, TP degree) from its profile tables.

For every token-wise op and for attention, several model families are scored by cross-validation
that holds out whole regions of the profiled grid (contiguous token-count ranges; attention: regions
of chunk length x context x batch kind), and the family with the best score is refitted on all rows.
The result, `FittedRuntime`, is nothing but arrays (token-op times on a token grid, attention
coefficients and oblivious trees), so it can be cached as .npz without pickle and evaluated fast.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

from profiler.grid import COARSE_TOKEN_LADDER
from profiler.schema import OP_NAMES
from simulator.config import HardwareConfig, ModelConfig
from simulator.runtime import features as F
from simulator.runtime.fitted import GRID_DENSE_TOKENS, GRID_MAX_TOKENS, FamilyScore, FittedRuntime
from simulator.runtime.model import (
    ResidualBoostedRegressor,
    ResidualInterpolatedRegressor,
    RooflineLinearRegressor,
    RooflineMaxRegressor,
    TreeRegressor,
)
from simulator.runtime.tables import ProfileError, ProfileFiles, read_attention, read_meta, read_ops

GEMM_OPS = ("qkv_proj", "attn_out_proj", "mlp_up_gate", "mlp_down", "lm_head")
# Families the hot path can evaluate in microseconds (attention is evaluated per iteration). Decode-only
# launches are also predicted a whole run at a time (decode_run_stage_times_s), in closed form only
# without trees (with them, one decode costs ~170 us on the development machine instead of ~9 us).
FAST_ATTENTION_FAMILIES = {
    "chunk": ("roofline_linear", "roofline_max", "roofline_sum_max", "roofline_max_x_boosted_trees",
              "roofline_sum_max_x_boosted_trees"),
    "decode": ("roofline_linear", "roofline_max", "roofline_sum_max"),
}
FAST_ATTENTION_FAMILIES["all"] = FAST_ATTENTION_FAMILIES["decode"]

def token_op_families() -> dict:
    """Candidate families for a token-wise op (X = features.TOKEN_FEATURES columns)."""
    linear = [1, 2, 3, 4, 5, 6]  # flops, bytes, roofline_ms, padded_flops, waves, serial_index_rows (+ intercept)
    return {
        "roofline_linear": RooflineLinearRegressor(columns=linear),
        "roofline_x_interpolation": ResidualInterpolatedRegressor(column=0, linear_columns=linear),
        # The same through a running median of 5 or 9 neighbouring measured corrections: isolated
        # cuBLAS kernel picks (3-10 % of GEMM counts are >10 % off both neighbours) stay out of the trend.
        "roofline_x_median5_interpolation": ResidualInterpolatedRegressor(column=0, linear_columns=linear,
                                                                          median_window=5),
        "roofline_x_median9_interpolation": ResidualInterpolatedRegressor(column=0, linear_columns=linear,
                                                                          median_window=9),
        "roofline_x_boosted_trees": ResidualBoostedRegressor(linear_columns=linear, tree_columns=[0],
                                                             n_estimators=60, depth=3),
        "random_forest": TreeRegressor(kind="random_forest", n_estimators=15),
        "gradient_boosting": TreeRegressor(kind="gradient_boosting", n_estimators=40, learning_rate=0.25),
    }


ATTENTION_ADDITIVE = ("launch", "num_decodes", "num_prefills", "prefill_q_tokens", "split_decode_blocks")
ATTENTION_COMPUTE = ("prefill_pairs",)
ATTENTION_MEMORY = ("decode_kv_tokens", "prefill_kv_reads", "mixed_decode_kv_tokens")
# One critical path per kind of thread block: a launch is at least as slow as its slowest block; and
# the list-scheduling bound of launches with a chunk and more query blocks than SMs. (The decode-only
# bound, features.decode_list_bound, is left to the linear and tree families: as a branch of its own
# it let the fit extrapolate decode runs beyond the profiled contexts too steeply.)
ATTENTION_CRITICAL = (("max_prefill_context",), ("unsplit_decode_critical",), ("max_mixed_decode_context",),
                      ("split_decode_critical",), ("chunk_list_bound",))
# Decode-only launches run FA2's decode path (query heads packed, KV split); launches with a prefill
# chunk walk 128-row query blocks. Each kind gets its own fit.
ATTENTION_KINDS = ("decode", "chunk")
KEPT_PER_KIND = "kept per launch kind"  # scores["attention"] key: each kind's kept family, errors pooled


def attention_families() -> dict:
    """Candidate families for attention (X = features.ATTENTION_FEATURES columns)."""
    cols = lambda names: [F.ATTENTION_FEATURES.index(c) for c in names]
    # Compute and memory as separate limits (a launch is as slow as the slower), or as one sum (prefill
    # and decode thread blocks take turns on the SMs); both against the critical path.
    critical = tuple(cols(branch) for branch in ATTENTION_CRITICAL)
    roofline_max = RooflineMaxRegressor(
        additive_columns=cols(ATTENTION_ADDITIVE),
        branches=(cols(ATTENTION_COMPUTE), cols(ATTENTION_MEMORY), *critical))
    roofline_sum_max = RooflineMaxRegressor(
        additive_columns=cols(ATTENTION_ADDITIVE),
        branches=(cols(ATTENTION_COMPUTE + ATTENTION_MEMORY), *critical))
    non_constant = list(range(1, len(F.ATTENTION_FEATURES)))
    return {
        "roofline_linear": RooflineLinearRegressor(fit_intercept=False),
        "roofline_max": roofline_max,
        "roofline_sum_max": roofline_sum_max,
        "roofline_max_x_boosted_trees": ResidualBoostedRegressor(base=roofline_max, tree_columns=non_constant,
                                                                 n_estimators=100, depth=4),
        "roofline_sum_max_x_boosted_trees": ResidualBoostedRegressor(base=roofline_sum_max,
                                                                     tree_columns=non_constant,
                                                                     n_estimators=100, depth=4),
        "random_forest": TreeRegressor(kind="random_forest", n_estimators=40),
        "gradient_boosting": TreeRegressor(kind="gradient_boosting", n_estimators=200),
    }


def attention_kind_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows of each launch kind: 'decode' (every sequence computes one token), 'chunk' (the rest)."""
    decode = (frame["kind"] == "decode").to_numpy()
    return {"decode": decode, "chunk": ~decode}


def percent_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Absolute percentage errors."""
    return np.abs(np.asarray(predicted) / np.asarray(measured) - 1.0) * 100.0


def cross_validate(estimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int = 5) -> np.ndarray:
    """Out-of-fold predictions with whole groups (grid regions) held out together."""
    n_splits = min(n_splits, len(np.unique(groups)))
    if n_splits < 2:
        raise ValueError("need at least two grid regions to hold one out")
    predicted = np.empty_like(y, dtype=np.float64)
    for train, test in GroupKFold(n_splits=n_splits).split(X, y, groups):
        predicted[test] = clone(estimator).fit(X[train], y[train]).predict(X[test])
    return predicted


def family_score(errors: np.ndarray) -> FamilyScore:
    return FamilyScore(float(np.median(errors)), float(np.percentile(errors, 95)), len(errors))


def cv_errors(families: dict, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Held-out absolute percentage errors of every family, per row, under region cross-validation."""
    return {name: percent_errors(cross_validate(estimator, X, y, groups), y) for name, estimator in families.items()}


def score_families(families: dict, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, FamilyScore]:
    """FamilyScore of every family under region-held-out cross-validation."""
    return {name: family_score(errors) for name, errors in cv_errors(families, X, y, groups).items()}


def token_range_groups(num_tokens: np.ndarray, points_per_region: int = 4) -> np.ndarray:
    """Group label per row: contiguous blocks of `points_per_region` sorted distinct token counts (a
    held-out block is a whole token range, e.g. 640..1024 on the profiler's ladder, so interior blocks
    test interpolation across the gap and the end blocks extrapolation)."""
    distinct = np.unique(num_tokens)
    num_regions = max(2, -(-len(distinct) // points_per_region))
    block_of = {n: min(i * num_regions // len(distinct), num_regions - 1) for i, n in enumerate(distinct)}
    return np.array([block_of[n] for n in num_tokens])


def coarse_region_groups(num_tokens: np.ndarray, coarse_ladder=COARSE_TOKEN_LADDER,
                         points_per_region: int = 4) -> np.ndarray:
    """Group label per row: held-out regions as wide as token_range_groups made them on the first, coarse
    ladder (4 of its points, e.g. 640..1024). Every profiled count belongs to the block of the largest
    coarse count at or below it, so holding out the block of 640..1024 also holds out 1040..1264 and is
    predicted from counts up to 624 and from 1280 on: the gap the coarse profiles had, whatever the
    grid's density."""
    n = np.asarray(num_tokens)
    coarse = np.array([c for c in coarse_ladder if c <= n.max()] or [n.min()])
    coarse_groups = token_range_groups(coarse, points_per_region)
    below = np.clip(np.searchsorted(coarse, n, side="right") - 1, 0, len(coarse) - 1)
    return coarse_groups[below]


def attention_region_groups(frame: pd.DataFrame) -> np.ndarray:
    """Group label per attention row: kind x chunk-length band x context band (factor-4 bands)."""
    q_band = np.floor(np.log2(frame["max_q_tokens"].to_numpy(dtype=float)) / 2).astype(int)
    kv_band = np.floor(np.log2(frame["kv_tokens_total"].to_numpy(dtype=float) + 1) / 2).astype(int)
    batch_band = np.floor(np.log2(frame["batch_size"].to_numpy(dtype=float)) / 2).astype(int)
    keys = [f"{k}|{q}|{kv}|{b}" for k, q, kv, b in zip(frame["kind"], q_band, kv_band, batch_band)]
    _, labels = np.unique(keys, return_inverse=True)
    return labels


def token_grid() -> np.ndarray:
    """Token counts the op tables are tabulated at (dense, then log-spaced, float64)."""
    dense = np.arange(1, GRID_DENSE_TOKENS + 1, dtype=np.float64)
    sparse = np.unique(np.geomspace(GRID_DENSE_TOKENS, GRID_MAX_TOKENS, 256).round())[1:]
    return np.concatenate([dense, sparse])


def gemm_out_features(model: ModelConfig, tp: int) -> dict[str, int]:
    """Output columns of each GEMM on one shard (for the wave-quantisation feature)."""
    q_heads = model.num_q_heads // tp
    kv_heads = model.kv_heads_per_gpu(tp)
    mlp = model.intermediate_size // tp
    return {
        "qkv_proj": (q_heads + 2 * kv_heads) * model.head_dim,
        "attn_out_proj": model.hidden_size,
        "mlp_up_gate": (2 if model.gated_mlp else 1) * mlp,
        "mlp_down": model.hidden_size,
        "lm_head": -(-model.vocab_size // tp),
    }


def peaks_for(hardware: HardwareConfig, meta: dict) -> F.Peaks:
    """Datasheet peaks of `hardware`; the SM count from the profile's meta.json when recorded."""
    environment = meta.get("environment", {}) if isinstance(meta.get("environment"), dict) else {}
    num_sms = int(environment.get("gpu_multiprocessors") or 132)  # 132: H100 SXM and H200
    return F.Peaks(flops_per_s=hardware.bf16_dense_tflops * 1e12,
                   bytes_per_s=hardware.memory_bandwidth_tbps * 1e12, num_sms=num_sms)


def token_op_data(rows: pd.DataFrame, op: str, source: str, peaks: F.Peaks, out_features: int):
    """(X, y, work) of one op's rows: TOKEN_FEATURES matrix, times in ms, affine work counts."""
    sub = rows[rows["op"] == op].sort_values("num_tokens")
    n = sub["num_tokens"].to_numpy(dtype=np.float64)
    try:
        work = F.affine_work(n, sub["flops"].to_numpy(), sub["bytes"].to_numpy(), f"{source} op={op}")
    except ValueError as e:
        raise ProfileError(str(e)) from None
    X = op_features(op, n, work, peaks, out_features)
    return X, sub["time_ms"].to_numpy(dtype=np.float64), work


# Ops that run PyTorch's index_select, whose kernel changes above this many indices (features.token_features).
SERIAL_INDEX_LIMIT = {"embedding": 16}


def op_features(op: str, num_tokens: np.ndarray, work: F.AffineWork, peaks: F.Peaks, out_features: int) -> np.ndarray:
    """TOKEN_FEATURES matrix of `op` at `num_tokens`."""
    return F.token_features(num_tokens, work, peaks, out_features,
                            serial_index_limit=SERIAL_INDEX_LIMIT.get(op, 0)).to_numpy()


COARSE = "coarse_regions"  # scores key: the kept family, regions as wide as on the coarse ladder


def fit_token_op(X: np.ndarray, y: np.ndarray, families: dict) -> tuple[str, object, dict[str, FamilyScore]]:
    """Score families by token-range CV, keep the best and refit it on all rows (and score the kept
    family on regions as wide as the coarse ladder's, for the report)."""
    groups = token_range_groups(X[:, 0])
    if len(np.unique(groups)) < 2:
        name = "roofline_linear"
        return name, clone(families[name]).fit(X, y), {}
    scores = score_families(families, X, y, groups)
    name = min(scores, key=lambda k: scores[k].score)
    coarse = coarse_region_groups(X[:, 0])
    if len(np.unique(coarse)) >= 2:
        scores[COARSE] = score_families({COARSE: families[name]}, X, y, coarse)[COARSE]
    return name, clone(families[name]).fit(X, y), scores


def exact_at_measured_counts(grid: np.ndarray, grid_ms: np.ndarray, num_tokens: np.ndarray,
                             measured_ms: np.ndarray) -> np.ndarray:
    """grid_ms with the value at every profiled token count replaced by its measurement (the geometric
    mean of repeated rows): where a count was measured, the simulator uses what the GPU did there,
    kernel-selection steps included; between counts the fitted family's trend."""
    counts, inverse = np.unique(num_tokens, return_inverse=True)
    measured = np.exp(np.bincount(inverse, weights=np.log(measured_ms)) / np.bincount(inverse))
    out = np.array(grid_ms, dtype=np.float64)
    at = np.searchsorted(grid, counts)
    on_grid = (at < len(grid)) & (grid[np.minimum(at, len(grid) - 1)] == counts)
    out[at[on_grid]] = measured[on_grid]
    return out


def fit_iteration_calibration(summed_ms: np.ndarray, measured_ms: np.ndarray,
                              num_layers: np.ndarray) -> tuple[float, float]:
    """(scale, ms per layer) with measured ~= scale * summed + per_layer * layers, both >= 0, fitted on
    relative error.

    Why: the op tables time each kernel alone, back to back with independent copies of itself, so one
    launch's tail overlaps the next one's head; in a forward pass every kernel waits for the one before
    (scale), and a layer also runs kernels no table holds (the KV-cache writes, views made contiguous:
    per layer). Both are properties of the GPU and the step, measured by the whole-iteration runs.
    """
    design = np.column_stack([summed_ms, num_layers]) / measured_ms[:, None]
    (scale, per_layer), _ = nnls(design, np.ones(len(measured_ms)))
    return float(scale), float(per_layer)


def attention_coefficients(estimator) -> np.ndarray:
    """(1 + branches, features) rows a, b_1, ... of time = a.x + max_g(b_g.x) of a fitted estimator."""
    base = estimator.linear_ if isinstance(estimator, ResidualBoostedRegressor) else estimator
    if isinstance(base, RooflineMaxRegressor):
        return base.coef_.copy()
    coef = np.zeros((2, base.n_features_in_))  # a linear model: one all-zero branch
    coef[0] = base.full_coef()
    coef[0, 0] += base.intercept_  # column 0 is the constant "launch"
    return coef


def export_attention(estimator) -> tuple[np.ndarray, dict | None]:
    """(coefficients, trees or None) of a fitted attention estimator, as plain arrays."""
    coef, trees = attention_coefficients(estimator), None
    if isinstance(estimator, ResidualBoostedRegressor):
        booster = estimator.booster_
        # The trees split log1p(x) > t; store the equivalent x > expm1(t) on the raw feature columns so
        # the hot path skips the logarithm.
        columns = np.asarray(estimator.tree_columns, dtype=np.int64)
        trees = {"features": columns[booster.features_], "thresholds": np.expm1(booster.thresholds_),
                 "leaf_values": booster.leaf_values_, "base": np.array([booster.base_])}
    return coef, trees


def attention_data(frame: pd.DataFrame, shape: F.AttentionShape) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of attention rows."""
    return F.attention_feature_table(frame["composition"], shape), frame["time_ms"].to_numpy(dtype=np.float64)


def fit_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                progress: bool = False) -> FittedRuntime:
    """Fit every op and attention of `model` on `hardware` at tensor-parallel degree `tp`."""
    from tqdm import tqdm

    start = time.perf_counter()
    model.validate_tp(tp)
    ops = read_ops(files.ops_csv, tp)
    attention = read_attention(files.attention_csv, tp)
    peaks = peaks_for(hardware, read_meta(files.meta_json))
    grid = token_grid()
    out_features = gemm_out_features(model, tp)
    op_ms, chosen, scores = {}, {}, {}
    for op in tqdm(OP_NAMES, desc=f"fit {model.name} {hardware.profile} tp={tp}", disable=not progress):
        X, y, work = token_op_data(ops, op, str(files.ops_csv), peaks, out_features.get(op, 0))
        name, estimator, op_scores = fit_token_op(X, y, token_op_families())
        trend_ms = estimator.predict(op_features(op, grid, work, peaks, out_features.get(op, 0)))
        op_ms[op] = exact_at_measured_counts(grid, trend_ms, X[:, 0], y)
        chosen[op], scores[op] = name, op_scores

    shape = F.AttentionShape(q_heads=model.num_q_heads // tp, kv_heads=model.kv_heads_per_gpu(tp),
                             num_sms=peaks.num_sms)
    X, y = attention_data(attention, shape)
    kept, attention_scores = fit_attention(X, y, attention_region_groups(attention), attention_kind_masks(attention))
    scores.update(attention_scores)
    if "all" in kept:
        chosen["attention"] = kept["all"][0]
    else:
        chosen.update({f"attention_{kind}": name for kind, (name, _) in kept.items()}, attention=KEPT_PER_KIND)
    decode = {}
    if "decode" in kept:
        coef, trees = export_attention(kept["decode"][1])
        decode = {"decode_attention_family": kept["decode"][0], "decode_attention_coef": coef,
                      "decode_attention_trees": trees}
    name, estimator = kept.get("chunk", kept.get("all"))
    coef, trees = export_attention(estimator)
    return FittedRuntime(
        model_name=model.name, hardware_profile=hardware.profile, tp=tp, grid_tokens=grid, op_ms=op_ms,
        attention_family=name, attention_coef=coef, attention_trees=trees,
        attention_q_heads=shape.q_heads, attention_kv_heads=shape.kv_heads, attention_block_m=shape.block_m,
        num_sms=shape.num_sms, **decode,
        chosen=chosen, scores=scores, fit_seconds=time.perf_counter() - start,
    )


def fit_attention(X: np.ndarray, y: np.ndarray, groups: np.ndarray, masks: dict[str, np.ndarray],
                  min_rows: int = 10) -> tuple[dict, dict]:
    """Fit attention per launch kind: ({'decode': (family, fitted estimator), 'chunk': ...}, scores).

    Each kind's families are scored by region cross-validation on that kind's rows, and the best one
    the hot path can evaluate fast (FAST_ATTENTION_FAMILIES) is refitted on them. scores holds 'attention_<kind>' (family ->
    FamilyScore) and 'attention' (every family fitted per kind, errors pooled over all launches, plus
    KEPT_PER_KIND). With too few rows or regions of a kind, one model is fitted on every launch and
    returned as 'all' (the decode-only model then falls back to it)."""
    families = attention_families()
    if any(mask.sum() < min_rows or len(np.unique(groups[mask])) < 2 for mask in masks.values()):
        if len(np.unique(groups)) < 2:
            return {"all": ("roofline_linear", clone(families["roofline_linear"]).fit(X, y))}, {}
        scores = {"attention": score_families(families, X, y, groups)}
        fast = {k: v for k, v in scores["attention"].items() if k in FAST_ATTENTION_FAMILIES["all"]}
        name = min(fast, key=lambda k: fast[k].score)
        return {"all": (name, clone(families[name]).fit(X, y))}, scores
    kept, scores, errors = {}, {}, {}
    for kind in ATTENTION_KINDS:
        mask = masks[kind]
        errors[kind] = cv_errors(families, X[mask], y[mask], groups[mask])
        scores[f"attention_{kind}"] = {name: family_score(e) for name, e in errors[kind].items()}
        fast = {k: v for k, v in scores[f"attention_{kind}"].items() if k in FAST_ATTENTION_FAMILIES[kind]}
        name = min(fast, key=lambda k: fast[k].score)
        kept[kind] = (name, clone(families[name]).fit(X[mask], y[mask]))
    pooled = {name: family_score(np.concatenate([errors[kind][name] for kind in ATTENTION_KINDS]))
              for name in families}
    pooled[KEPT_PER_KIND] = family_score(np.concatenate([errors[kind][kept[kind][0]] for kind in ATTENTION_KINDS]))
    scores["attention"] = pooled
    return kept, scores
