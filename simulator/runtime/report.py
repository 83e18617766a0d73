"""Accuracy report of the runtime model: writes docs/runtime_accuracy.md.

    python -m simulator.runtime.report                      # every model profiled on h100
    python -m simulator.runtime.report hardware=h100 models=llama-3-8b,llama-2-7b out=docs/runtime_accuracy.md

Per op: held-out absolute percentage error (median, P95) of every model family under cross-validation
by grid region (whole token ranges; attention: regions of chunk length x context x batch kind), and
which family was kept. Mixed batches: attention fitted on prefill-only and decode-only launches, then
asked about the measured mixed launches. Per iteration: predicted (CPU overhead 0) vs measured whole
forward passes of data/validation/<gpu>/<model>/iterations.csv.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone

from profiler.schema import OP_NAMES
from simulator.config import HardwareConfig, ModelConfig, load_hardware_config, load_model_config
from simulator.paths import DATA_DIR, PROFILES_DIR, REPO_ROOT
from simulator.runtime import features as F
from simulator.runtime.cpu_overhead import CpuOverhead
from simulator.runtime.fit import (
    TARGET_MEDIAN_PCT,
    TARGET_P95_PCT,
    FittedRuntime,
    attention_data,
    attention_families,
    attention_region_groups,
    cross_validate,
    fit_iteration_calibration,
    gemm_out_features,
    peaks_for,
    percent_errors,
    token_op_data,
    token_op_families,
)
from simulator.runtime.predictor import RuntimePredictor, build_predictor
from simulator.runtime.tables import (
    profile_files,
    read_attention,
    read_iterations,
    read_meta,
    read_ops,
    validation_csv,
)


def _pct(values: np.ndarray) -> tuple[float, float]:
    return float(np.median(values)), float(np.percentile(values, 95))


def _mark(median: float, p95: float, target_median: float, target_p95: float) -> str:
    return "yes" if median <= target_median and p95 <= target_p95 else "**no**"


def token_op_errors(model: ModelConfig, hardware: HardwareConfig, fitted: FittedRuntime, ops_csv: Path) -> dict:
    """Per token-wise op, (median, P95) % of the kept family with each profiled count held out alone
    (interpolation across one missing ladder point, twice the real gap), and of the predictor's table
    at the profiled counts (in sample: exact by construction, see fit.exact_at_measured_counts)."""
    peaks = peaks_for(hardware, {"environment": {"gpu_multiprocessors": fitted.num_sms}})
    rows = read_ops(ops_csv, fitted.tp)
    out_features = gemm_out_features(model, fitted.tp)
    result = {}
    for op in OP_NAMES:
        X, y, _ = token_op_data(rows, op, str(ops_csv), peaks, out_features.get(op, 0))
        counts = X[:, 0]
        kept = token_op_families()[fitted.chosen[op]]
        held_out = percent_errors(cross_validate(kept, X, y, counts, n_splits=len(np.unique(counts))), y)
        in_sample = percent_errors(fitted.op_ms[op][np.searchsorted(fitted.grid_tokens, counts)], y)
        result[op] = (_pct(held_out), _pct(in_sample))
    return result


def op_table(fitted: FittedRuntime, token_errors: dict) -> list[str]:
    """Markdown rows: op, kept family, its held-out errors (by region, by single count), the predictor's
    in-sample error, and every family's region-held-out errors."""
    families = sorted({fam for scores in fitted.scores.values() for fam in scores})
    lines = ["| op | kept family | **region held out** | meets 3 % / 10 % | one count held out | in sample | "
             + " | ".join(families) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(families)]
    for op, scores in fitted.scores.items():
        kept = fitted.chosen[op]
        best = scores[kept]
        cells = [f"{scores[f].median_pct:.2f} / {scores[f].p95_pct:.1f}" if f in scores else "-" for f in families]
        if op in token_errors:
            (loo_med, loo_p95), (ins_med, ins_p95) = token_errors[op]
            extra = f"{loo_med:.2f} / {loo_p95:.1f} | {ins_med:.2f} / {ins_p95:.1f}"
        else:
            extra = "- | -"
        lines.append(f"| {op} | {kept} | **{best.median_pct:.2f} / {best.p95_pct:.1f}** | "
                     f"{_mark(best.median_pct, best.p95_pct, TARGET_MEDIAN_PCT, TARGET_P95_PCT)} | {extra} | "
                     + " | ".join(cells) + " |")
    return lines


def attention_detail(fitted: FittedRuntime, attention: pd.DataFrame) -> list[str]:
    """Held-out errors of the kept attention family by launch kind, and the mixed-batch experiment."""
    shape = fitted.attention_shape()
    X, y = attention_data(attention, shape)
    estimator = attention_families()[fitted.chosen["attention"]]
    errors = percent_errors(cross_validate(estimator, X, y, attention_region_groups(attention)), y)
    lines = ["| launches | rows | median % | P95 % |", "|---|---|---|---|"]
    for kind in ("prefill", "decode", "mixed"):
        mask = (attention["kind"] == kind).to_numpy()
        if mask.any():
            med, p95 = _pct(errors[mask])
            lines.append(f"| {kind} (region held out) | {mask.sum()} | {med:.2f} | {p95:.2f} |")
    mixed = (attention["kind"] == "mixed").to_numpy()
    if mixed.any() and (~mixed).sum() > 10:
        model = clone(estimator).fit(X[~mixed], y[~mixed])
        med, p95 = _pct(percent_errors(model.predict(X[mixed]), y[mixed]))
        lines.append(f"| mixed, fitted on prefill-only and decode-only launches alone | {mixed.sum()} | "
                     f"{med:.2f} | {p95:.2f} |")
        linear = clone(attention_families()["roofline_linear"]).fit(X[~mixed], y[~mixed])
        med, p95 = _pct(percent_errors(linear.predict(X[mixed]), y[mixed]))
        lines.append(f"| mixed, same, roofline-linear terms only | {mixed.sum()} | {med:.2f} | {p95:.2f} |")
    return lines


def iteration_table(model: ModelConfig, hardware: HardwareConfig, path: Path) -> tuple[list[str], dict]:
    """Predicted vs measured whole iterations (CPU overhead 0): the bottom-up sum of kernel times, and
    the same calibrated (fit_iteration_calibration) with 5-fold cross-validation over the rows."""
    from sklearn.model_selection import KFold

    frame = read_iterations(path)
    frame = frame[frame["tp"] == 1].reset_index(drop=True)
    fitted = build_predictor(model, hardware, 1, 1, cpu_overhead_s=0.0).fitted
    raw_fit = dataclasses.replace(fitted, calibration_scale=1.0, calibration_layer_ms=0.0)
    summed = np.empty(len(frame))
    layers = frame["num_layers"].to_numpy(dtype=float)
    predictors: dict[int, RuntimePredictor] = {}
    for i, row in enumerate(frame.itertuples()):
        if row.num_layers not in predictors:  # validation may run fewer layers than the model
            shaped = dataclasses.replace(model, num_layers=int(row.num_layers))
            predictors[row.num_layers] = RuntimePredictor(raw_fit, shaped, 1, CpuOverhead(0.0))
        q, kv = F.composition_arrays(row.composition)
        summed[i] = predictors[row.num_layers].stage_times_s(q, kv).sum() * 1e3
    measured = frame["time_ms"].to_numpy(dtype=float)
    calibrated = np.empty(len(frame))
    for train, test in KFold(n_splits=5, shuffle=True, random_state=0).split(summed):
        scale, per_layer = fit_iteration_calibration(summed[train], measured[train], layers[train])
        calibrated[test] = scale * summed[test] + per_layer * layers[test]
    kinds = np.array([_batch_kind(c) for c in frame["composition"]])
    lines = [f"Calibration fitted on all {fitted.calibration_rows} rows (what the predictor uses): measured ~= "
             f"{fitted.calibration_scale:.4f} x summed kernel times + {fitted.calibration_layer_ms * 1e3:.1f} us "
             f"per layer.", "",
             "| prediction | batches | rows | median % | P95 % | max % | mean signed % | meets 5 % / 12 % |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for label, predicted in (("sum of kernel times (uncalibrated)", summed),
                             ("calibrated, 5-fold held out", calibrated)):
        errors = percent_errors(predicted, measured)
        masks = [("all", np.ones(len(frame), bool))] + [(k, kinds == k) for k in ("prefill", "decode", "mixed")]
        for kind, mask in masks:
            if not mask.any():
                continue
            med, p95 = _pct(errors[mask])
            signed = float(np.mean(predicted[mask] / measured[mask] - 1) * 100)
            summary[(label, kind)] = (med, p95)
            lines.append(f"| {label} | {kind} | {mask.sum()} | {med:.2f} | {p95:.2f} | {errors[mask].max():.1f} | "
                         f"{signed:+.2f} | {_mark(med, p95, 5.0, 12.0) if kind == 'all' else ''} |")
    errors = percent_errors(calibrated, measured)
    worst = np.argsort(errors)[-5:][::-1]
    lines += ["", "Worst five (calibrated, held out):", "",
              "| composition (first 3 sequences) | sequences | tokens | measured ms | predicted ms | error % |",
              "|---|---|---|---|---|---|"]
    for i in worst:
        comp = frame["composition"].iloc[i]
        lines.append(f"| {comp[:3].tolist()} | {len(comp)} | {int(comp[:, 0].sum())} | {measured[i]:.3f} | "
                     f"{calibrated[i]:.3f} | {errors[i]:.1f} |")
    return lines, summary


def _batch_kind(comp: np.ndarray) -> str:
    decodes = int((comp[:, 0] == 1).sum())
    return "decode" if decodes == len(comp) else "prefill" if decodes == 0 else "mixed"


def model_section(model: ModelConfig, hardware: HardwareConfig, profiles_dir: Path = PROFILES_DIR,
                  data_dir: Path = DATA_DIR) -> list[str]:
    files = profile_files(model, hardware, profiles_dir)
    start = time.perf_counter()
    predictor = build_predictor(model, hardware, 1, 1, cpu_overhead_s=0.0, profiles_dir=profiles_dir)
    fitted = predictor.fitted
    meta = read_meta(files.meta_json)
    backend = meta.get("attention_backend") or meta.get("backend") or "see meta.json"
    lines = [f"## {model.name} on {hardware.name} (tp=1)", "",
             f"Profile: `{files.profile_dir.relative_to(REPO_ROOT) if files.profile_dir.is_relative_to(REPO_ROOT) else files.profile_dir}` "
             f"(attention backend: {backend}). Fit time {fitted.fit_seconds:.1f} s "
             f"(this build {time.perf_counter() - start:.1f} s, cached fits load in well under a second).", "",
             "### Per op, held out by grid region", "",
             "Cells: median / P95 absolute percentage error. *Region held out*: 4 consecutive profiled token "
             "counts predicted from the rest (attention: a whole region), the kept family's score. *One count "
             "held out*: each profiled count predicted from all others (a gap of two ladder steps, twice "
             "the real one). *In sample*: the predictor's table at the profiled counts, which holds the "
             "measurements themselves (between them, the kept family). Then every candidate family, region "
             "held out; kept_x_log_interpolation is the kept family interpolated through the measured "
             "points in log tokens (not used, see above).", ""]
    lines += op_table(fitted, token_op_errors(model, hardware, fitted, files.ops_csv))
    attention = read_attention(files.attention_csv, 1)
    lines += ["", "### Attention by launch kind (kept family)", ""]
    lines += attention_detail(fitted, attention)
    path = validation_csv(model, hardware, data_dir)
    lines += ["", "### Whole iterations, predicted vs measured", ""]
    if path.exists():
        vmeta = read_meta(path.parent / "meta.json")
        what = vmeta.get("time_ms") or vmeta.get("what") or "time_ms column (see its meta.json)"
        lines += [f"`{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}`: {what}. "
                  "Predicted with CPU overhead 0 (the measurement is GPU time only).", ""]
        table, _ = iteration_table(model, hardware, path)
        lines += table
    else:
        lines.append(f"No whole-iteration measurements yet ({path} does not exist).")
    return lines + [""]


WHY_MISSED = [
    "## Where the per-op targets are missed, and why", "",
    "* Whole iterations meet the targets once calibrated (held out, see each model's last table). The",
    "  uncalibrated bottom-up sum is 6-8 % fast on every kind of batch: the op tables time each kernel",
    "  back to back with independent copies of itself, while in a forward pass every kernel waits for the",
    "  previous one and a layer also runs kernels no table holds (KV-cache writes). One scale factor,",
    "  fitted on the measured forwards (5-fold held out here), removes that bias.",
    "* Per op, held-out errors are scored on whole token ranges (4 consecutive ladder points, e.g.",
    "  640-1024, predicted from 512 and 1280 only) and whole attention regions (factor-4 bands of chunk,",
    "  context and batch). Medians are mostly within 1-4 %; the P95s are set by kernel-selection steps",
    "  that no smooth model can see from the neighbouring points: cuBLAS picks a slower GEMM at",
    "  mlp_up_gate n=448 (0.29 ms vs 0.16 ms at 512), the embedding lookup switches kernels between 16 and",
    "  24 tokens (4x faster), RMSNorm and sampling change launch shapes in the low hundreds of tokens.",
    "* At every profiled token count the predictor uses the measurement itself (*in sample* 0 %); between",
    "  counts, the kept family's trend. Interpolating the measured/fitted ratio in log tokens between the",
    "  points instead (column kept_x_log_interpolation) was tried and rejected: a kernel-selection step is",
    "  a step, and spreading it over the neighbouring gaps made the whole-iteration check worse",
    "  (llama-3-8b calibrated held out: median 3.33 % / P95 11.36 % against 2.70 % / 10.94 %; batches of",
    "  436-476 tokens moved from -10 % to +10-16 %), and its region-held-out P95 is worse for every GEMM.",
    "* Attention: the features follow what FlashAttention-2 does (decode-only launches pack grouped query",
    "  heads and split the KV by FA2's own heuristic; chunks and the decodes launched with them walk",
    "  128-row query blocks; the slowest thread block bounds a launch that does not fill the GPU). That took",
    "  the held-out median from 13 % to 5-6 % on llama-3-8b. The remaining tails are regions whose kernel",
    "  path differs from every neighbour (a single decode is 2x cheaper per launch than two; llama-2-7b's",
    "  long single-chunk prefills), which a held-out region cannot reveal.",
    "* Tried for attention, same region CV (llama-3-8b / llama-2-7b, all launches, median / P95 %): separate",
    "  fits for decode-only launches and launches with a chunk, best family each: 5.8 / 25.9 and 5.6 / 23.8",
    "  (kept: 5.9 / 28.2 and 6.4 / 26.0); the kept family times a residual correction from the 1-6 nearest",
    "  measured launches of the same kind in (log batch, log longest chunk, log mean context): 5.0-6.0 /",
    "  27-32 and 4.2-5.4 / 23-29. At most a point off the median and 2-4 off the P95, short of the",
    "  targets either way; neither is adopted yet (the per-kind split is cheap on the hot path and the",
    "  next step; the neighbour correction would cost the closed-form decode runs).",
    "",
]


def write_report(hardware_name: str = "h100", model_names: list[str] | None = None,
                 out: Path = REPO_ROOT / "docs" / "runtime_accuracy.md") -> Path:
    hardware = load_hardware_config(hardware_name)
    gpu_dir = PROFILES_DIR / hardware.profile
    if model_names is None:
        model_names = sorted(p.name for p in gpu_dir.iterdir() if (p / "ops.csv").exists()) if gpu_dir.is_dir() else []
    lines = ["# Runtime model accuracy", "",
             "Generated by `python -m simulator.runtime.report` from the committed profile tables; see "
             "docs/runtime_model.md for the model. Targets (issue 4): per op median <= 3 %, P95 <= 10 % "
             "on held-out grid regions; per iteration median <= 5 %, P95 <= 12 %.", ""]
    lines += WHY_MISSED
    if not model_names:
        lines.append(f"No profiles under {gpu_dir} yet.")
    for name in model_names:
        lines += model_section(load_model_config(name), hardware)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    models = args["models"].split(",") if "models" in args else None
    out = Path(args.get("out", REPO_ROOT / "docs" / "runtime_accuracy.md"))
    print(write_report(args.get("hardware", "h100"), models, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
