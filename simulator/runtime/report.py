"""Accuracy report of the runtime model: writes docs/runtime_accuracy.md.

    python -m simulator.runtime.report                      # every model profiled on h100
    python -m simulator.runtime.report hardware=h100 models=llama-3-8b,llama-2-7b out=docs/runtime_accuracy.md

Per op: held-out absolute percentage error (median, P95) of every model family under cross-validation
by grid region (whole token ranges; attention: regions of chunk length x context x batch kind), and
which family was kept. Mixed batches: attention fitted on prefill-only and decode-only launches, then
asked about the measured mixed launches. Per iteration: predicted (no host terms) vs measured whole
forward passes of data/validation/<gpu>/<model>/iterations.csv (one fused attention launch per layer) and
iterations_split.csv (a prefill launch and a decode launch), each with the runtime model in that launch
mode, and the split forwards' piecewise-graph launches against an engine with piecewise graphs.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone

from profiler.schema import OP_NAMES, OPS_CSV, iteration_file_names, table_path
from simulator.config import HardwareConfig, ModelConfig, load_hardware_config, load_model_config
from simulator.paths import DATA_DIR, PROFILES_DIR, REPO_ROOT
from simulator.runtime.fit import (
    COARSE,
    KEPT_PER_KIND,
    attention_data,
    attention_families,
    attention_kind_masks,
    attention_region_groups,
    cross_validate,
    fit_iteration_calibration,
    gemm_out_features,
    peaks_for,
    percent_errors,
    token_op_data,
    token_op_families,
)
from simulator.runtime.fitted import TARGET_MEDIAN_PCT, TARGET_P95_PCT, FittedRuntime
from simulator.runtime.predictor import build_predictor, fitted_runtime, forward_times_ms, kernel_sum_ms
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
    """Markdown rows: op, kept family, its held-out errors (by region, by regions as wide as the coarse
    ladder's, by single count), the predictor's in-sample error, and every family's region-held-out errors."""
    families = sorted({fam for scores in fitted.scores.values() for fam in scores} - {COARSE, KEPT_PER_KIND})
    lines = ["| op | kept family | **region held out** | meets 3 % / 10 % | regions as wide as before | "
             "one count held out | in sample | " + " | ".join(families) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(families)]
    for op, scores in fitted.scores.items():
        kept = fitted.chosen[op]
        best = scores[kept]
        cells = [f"{scores[f].median_pct:.2f} / {scores[f].p95_pct:.1f}" if f in scores else "-" for f in families]
        coarse = f"{scores[COARSE].median_pct:.2f} / {scores[COARSE].p95_pct:.1f}" if COARSE in scores else "-"
        if op in token_errors:
            (loo_med, loo_p95), (ins_med, ins_p95) = token_errors[op]
            extra = f"{loo_med:.2f} / {loo_p95:.1f} | {ins_med:.2f} / {ins_p95:.1f}"
        else:
            extra = "- | -"
        label = {"attention_decode": "attention, decode-only launches",
                 "attention_chunk": "attention, launches with a chunk",
                 "attention": "attention, all launches"}.get(op, op)
        lines.append(f"| {label} | {kept} | **{best.median_pct:.2f} / {best.p95_pct:.1f}** | "
                     f"{_mark(best.median_pct, best.p95_pct, TARGET_MEDIAN_PCT, TARGET_P95_PCT)} | {coarse} | {extra} | "
                     + " | ".join(cells) + " |")
    return lines


def attention_detail(fitted: FittedRuntime, attention: pd.DataFrame) -> list[str]:
    """Held-out errors of the kept attention families by launch kind, and the mixed-batch experiment."""
    shape = fitted.attention_shape()
    X, y = attention_data(attention, shape)
    groups = attention_region_groups(attention)
    errors = np.empty(len(y))
    kinds = attention_kind_masks(attention)
    per_kind = "attention_decode" in fitted.chosen
    for kind, mask in kinds.items():
        family = fitted.chosen[f"attention_{kind}"] if per_kind else fitted.chosen["attention"]
        rows = mask if per_kind else np.ones(len(y), bool)
        predicted = cross_validate(attention_families()[family], X[rows], y[rows], groups[rows])
        errors[rows] = percent_errors(predicted, y[rows])
        if not per_kind:
            break
    lines = ["| launches | rows | median % | P95 % |", "|---|---|---|---|"]
    for kind in ("prefill", "decode", "mixed"):
        mask = (attention["kind"] == kind).to_numpy()
        if mask.any():
            med, p95 = _pct(errors[mask])
            lines.append(f"| {kind} (region held out) | {mask.sum()} | {med:.2f} | {p95:.2f} |")
    mixed = (attention["kind"] == "mixed").to_numpy()
    prefill = (attention["kind"] == "prefill").to_numpy()
    train = prefill if per_kind else ~mixed
    if mixed.any() and train.sum() > 10:
        family = fitted.chosen["attention_chunk"] if per_kind else fitted.chosen["attention"]
        model = clone(attention_families()[family]).fit(X[train], y[train])
        med, p95 = _pct(percent_errors(model.predict(X[mixed]), y[mixed]))
        alone = "prefill-only launches" if per_kind else "prefill-only and decode-only launches"
        lines.append(f"| mixed, fitted on {alone} alone | {mixed.sum()} | {med:.2f} | {p95:.2f} |")
    return lines


def iteration_table(model: ModelConfig, hardware: HardwareConfig, path: Path, tp: int = 1,
                    attention_launch: str = "fused_varlen") -> tuple[list[str], dict]:
    """Predicted vs measured whole iterations of one TP shard (no host terms, no communication), attention
    launched as `attention_launch`: the bottom-up sum of kernel times, and the same calibrated
    (fit_iteration_calibration) with 5-fold cross-validation over the rows."""
    from sklearn.model_selection import KFold

    frame = read_iterations(path)
    frame = frame[frame["tp"] == tp].reset_index(drop=True)
    fitted = fitted_runtime(model, hardware, tp, profile_files(model, hardware), attention_launch=attention_launch)
    summed = kernel_sum_ms(fitted, model, frame, attention_launch)
    layers = frame["num_layers"].to_numpy(dtype=float)
    measured = frame["time_ms"].to_numpy(dtype=float)
    calibrated = np.empty(len(frame))
    for train, test in KFold(n_splits=5, shuffle=True, random_state=0).split(summed):
        scale, per_layer = fit_iteration_calibration(summed[train], measured[train], layers[train])
        calibrated[test] = scale * summed[test] + per_layer * layers[test]
    kinds = np.array([_batch_kind(c) for c in frame["composition"]])
    lines = [(f"Calibration fitted on all {fitted.calibration_rows} rows (what the predictor uses): measured ~= "
             f"{fitted.calibration_scale:.4f} x summed kernel times + {fitted.calibration_layer_ms * 1e3:.1f} us "
             f"per layer."), "",
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
    if "piecewise_time_ms" in frame.columns:
        lines += piecewise_rows(model, fitted, frame, summary)
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


def piecewise_rows(model: ModelConfig, fitted: FittedRuntime, frame, summary: dict) -> list[str]:
    """Rows of the forwards also launched as piecewise CUDA graphs (iterations_split.csv): the calibrated
    prediction of the graph replay, its token-wise kernels at the padded capture size, against the measured
    piecewise launch (host launches included, so the launch floor shows as the mean signed error)."""
    from simulator.engine import EngineProfile

    rows = np.isfinite(frame["piecewise_time_ms"].to_numpy(dtype=float))
    if not rows.any():
        return []
    engine = EngineProfile(name="piecewise_kernels", attention_launch="split", cuda_graphs="piecewise",
                           graph_max_decode_batch=0, graph_max_tokens=int(frame.loc[rows, "piecewise_tokens"].max()))
    measured = frame.loc[rows, "piecewise_time_ms"].to_numpy(dtype=float)
    predicted = forward_times_ms(fitted, model, frame[rows], engine)
    errors = percent_errors(predicted, measured)
    med, p95 = _pct(errors)
    signed = float(np.mean(predicted / measured - 1) * 100)
    summary[("piecewise launch", "all")] = (med, p95)
    return [(f"| piecewise CUDA graphs, launched from the host (calibration on all rows) | up to "
             f"{engine.graph_max_tokens} tokens | {rows.sum()} | {med:.2f} | {p95:.2f} | {errors.max():.1f} | "
             f"{signed:+.2f} | |")]


def _shown(path: Path) -> Path:
    """A path as the report prints it: relative to the repository when inside it."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


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
             (f"Profile: `{_shown(files.profile_dir)}` "
             f"(attention backend: {backend}). Fit time {fitted.fit_seconds:.1f} s "
             f"(this build {time.perf_counter() - start:.1f} s, cached fits load in well under a second)."), "",
             "### Per op, held out by grid region", "",
             ("Cells: median / P95 absolute percentage error. *Region held out*: 4 consecutive profiled token "
             "counts predicted from the rest (attention: a whole region of launch kind x chunk x context x "
             "batch, factor-4 bands), the kept family's score. *Regions as wide as before*: every profiled "
             "count from one block of 4 points of the first, 48-point ladder up to the next block "
             "(e.g. 448..880, predicted from counts up to 440 and from 896 on), the kept family. *One count "
             "held out*: each profiled count predicted from all others. *In sample*: the predictor's table "
             "at the profiled counts, which holds the measurements themselves (between them, the kept "
             "family). Then every candidate family, region held out. Attention is fitted per launch kind "
             "(decode-only; with a chunk); its 'all launches' row pools the two kinds' held-out errors."), ""]
    lines += op_table(fitted, token_op_errors(model, hardware, fitted, files.ops_csv))
    attention = read_attention(files.attention_csv, 1)
    lines += ["", "### Attention by launch kind (kept family)", ""]
    lines += attention_detail(fitted, attention)
    path = validation_csv(model, hardware, data_dir)
    lines += ["", "### Whole iterations, predicted vs measured", ""]
    if path.exists():
        for launch in ATTENTION_LAUNCHES_MEASURED:
            launch_path = validation_csv(model, hardware, data_dir, launch)
            if not launch_path.exists():
                continue
            vmeta = read_meta(launch_path.parent / iteration_file_names(launch)[1])
            what = vmeta.get("what") or "time_ms column (see its meta.json)"
            lines += [(f"Attention launched **{launch}**. `{_shown(launch_path)}`: {what}. "
                       "Predicted with no host terms (the measurement is a CUDA-graph replay: GPU time only) and, "
                       "for a TP shard, without its all-reduces (the run times one GPU's shard)."), ""]
            for tp in sorted(set(read_iterations(launch_path)["tp"].tolist())):
                table, summary = iteration_table(model, hardware, launch_path, tp, launch)
                ITERATION_SUMMARY[(model.name, tp, launch)] = summary
                lines += [f"#### tp={tp}, {launch}", "", *table, ""]
    else:
        lines.append(f"No whole-iteration measurements yet ({_shown(path)} does not exist). The predictor's calibration "
                     f"is {fitted.calibration_source or 'none'}: measured ~= {fitted.calibration_scale:.4f} x summed "
                     f"kernel times + {fitted.calibration_layer_ms * 1e3:.1f} us per layer.")
    return lines + [""]


WHY_MISSED = [
    "## Where the per-op targets are missed, and why", "",
    "* Whole iterations meet the targets once calibrated (held out, see each model's last table). The",
    "  uncalibrated bottom-up sum is ~6 % fast on every kind of batch: the op tables time each kernel",
    "  back to back with independent copies of itself, while in a forward pass every kernel waits for the",
    "  previous one and a layer also runs kernels no table holds (KV-cache writes). One scale factor,",
    "  fitted on the measured forwards (5-fold held out here), removes that bias.",
    "* Token-wise ops are profiled on a dense ladder (208 counts: every count to 32, every 4th to 128,",
    "  every 8th to 512, every 16th to 1024, then 1/32 to 1/16 of the count; docs/profiler.md). A held-out",
    "  region is still 4 consecutive profiled counts, now predicted from neighbours 5 ladder steps apart",
    "  (5 tokens below 32, 20 to 128, 40 to 512, 80 to 1024, 160 to 2048, 640 to 4096, 2560 to 8192);",
    "  on the first, 48-point ladder the same rule held out e.g. 640-1024 between 512 and 1280. The",
    "  column 'regions as wide as before' holds out those wide token ranges on the dense data.",
    "* Every non-GEMM op now meets 3 % / 10 % on all six models. The embedding's 55 % P95 came from",
    "  PyTorch's index_select switching kernels after 16 indices (a feature now: serial_index_rows); the",
    "  norms, activation, rotary embedding and sampling change launch shapes in the tens and low hundreds",
    "  of tokens, which the dense ladder resolves.",
    "* GEMMs: medians 1.1-3.1 %, P95 6.4-13.5 %; missed (P95 > 10 %) for qkv_proj, mlp_up_gate and",
    "  mlp_down of llama-3-8b / mistral-7b, mlp_down of llama-2-7b and qkv_proj / mlp_down of yi-34b.",
    "  cuBLAS picks a 1.2-2x slower kernel at isolated token counts whose neighbours 8-16 tokens away are",
    "  on the trend (mlp_up_gate on llama-3-8b: 288, 400, 440, 448, 560, 656, 672, 832, 864, 976, 1008;",
    "  448 for mlp_up_gate and 384 for mlp_down were as slow on both H100s that measured them: the",
    "  heuristic, not noise). 3-10 % of a GEMM's counts are more than 10 % off the median of their four",
    "  neighbours (llama-3-8b mlp_down 9.5 %, qkv_proj 8 %, mlp_up_gate 7.5 %); held out, such a count",
    "  cannot be predicted from its neighbours,",
    "  and where they are over 5 % of the counts the P95 cannot reach 10 %. The predictor uses the",
    "  measurement at every profiled count (in sample 0 %) and between counts a trend through a running",
    "  median of the neighbouring counts, so a spike is neither smeared over its neighbours nor assumed.",
    "* Attention: fitted per launch kind (decode-only; with a prefill chunk), with the list-scheduling",
    "  bounds as features and 2.5x more measured launches (batch sizes, contexts and chunks between the",
    "  first grid's ladders; chunks next to many short decodes). Held out by the same factor-4 regions,",
    "  median 4.5-6.0 %, P95 18.7-22.7 % (first grid and one model: 4.6-6.4 / 26-32). Still short of",
    "  3 / 10. Decode-only launches are the weaker half (median 5.9-7.3 %): only closed-form families are",
    "  eligible there, because a decode run is predicted in closed form; the boosted-tree correction",
    "  reaches 3.2-4.3 % / 13-22 % on them but costs ~170 us per decode on the hot path (target 20 us per",
    "  iteration). The remaining tails are launches of a few microseconds whose kernel path changes (one",
    "  decode costs half of two at short contexts; [[16, 256]] takes 19 us, [[64, 0]] 6 us) and batches of",
    "  contexts so different that the GPU's in-order block scheduling is only bounded, not known.",
    "* Tried for attention and not kept: the decode-only list bound as a branch of its own (llama-2-7b",
    "  decode P95 29 -> 18 %, llama-3-8b median 5.6 -> 6.3 %; and on the test suite's synthetic GPU it",
    "  extrapolated a 100 x 3,900-token decode 8 % high); an indicator for launches of two or more",
    "  sequences (no gain once the kinds are fitted apart); separate fits without the new features and",
    "  launches (5.8 / 25.9 and 5.6 / 23.8 on the first grid); a correction from the nearest measured",
    "  launches (5.0-6.0 / 27-32 on the first grid).",
    "",
]


ATTENTION_LAUNCHES_MEASURED = ("fused_varlen", "split")
ITERATION_SUMMARY: dict = {}  # (model, tp, launch) -> {(prediction, batches): (median %, P95 %)}
ENGINE_TARGET = (3.0, 8.0)  # issue 15: whole forwards per engine mode, median / P95 %


def engine_summary() -> list[str]:
    """One table of the calibrated, held-out whole-forward errors per model and launch mode, mixed batches
    apart from decode-only and prefill-only ones (issue 15's targets)."""
    if not ITERATION_SUMMARY:
        return []
    lines = ["## Whole forwards per attention launch mode (calibrated, 5-fold held out)", "",
             (f"Median / P95 absolute % error. Target per engine mode: median <= {ENGINE_TARGET[0]:g} %, "
              f"P95 <= {ENGINE_TARGET[1]:g} % (bold where missed)."), "",
             "| model | tp | launch | all | mixed | decode-only | prefill-only | piecewise launch |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, tp, launch), summary in sorted(ITERATION_SUMMARY.items()):
        cells = []
        for kind in ("all", "mixed", "decode", "prefill"):
            value = summary.get(("calibrated, 5-fold held out", kind))
            cells.append(_target_cell(value))
        cells.append(_target_cell(summary.get(("piecewise launch", "all")), target=False))
        lines.append(f"| {name} | {tp} | {launch} | " + " | ".join(cells) + " |")
    return lines + [""]


def _target_cell(value, target: bool = True) -> str:
    if value is None:
        return "-"
    text = f"{value[0]:.2f} / {value[1]:.1f}"
    missed = target and (value[0] > ENGINE_TARGET[0] or value[1] > ENGINE_TARGET[1])
    return f"**{text}**" if missed else text


def library_versions() -> str:
    """'python 3.11.7, numpy 2.4.6, ...': what the fits depend on."""
    from importlib import metadata

    names = ("numpy", "scipy", "scikit-learn", "pandas")
    return ", ".join([f"python {sys.version.split()[0]}"] + [f"{n} {metadata.version(n)}" for n in names])


def write_report(hardware_name: str = "h100", model_names: list[str] | None = None,
                 out: Path = REPO_ROOT / "docs" / "runtime_accuracy.md") -> Path:
    hardware = load_hardware_config(hardware_name)
    gpu_dir = PROFILES_DIR / hardware.profile
    if model_names is None:
        profiled = gpu_dir.iterdir() if gpu_dir.is_dir() else []
        model_names = sorted(p.name for p in profiled if table_path(p, OPS_CSV).exists())
    lines = ["# Runtime model accuracy", "",
             ("Generated by `python -m simulator.runtime.report` from the committed profile tables; see "
             "docs/runtime_model.md for the model. Targets (issue 4): per op median <= 3 %, P95 <= 10 % "
             "on held-out grid regions; per iteration median <= 5 %, P95 <= 12 %."), "",
             (f"Made with {library_versions()}: the fits (and so every number below) can move with scikit-learn, "
             "numpy or SciPy versions."), ""]
    lines += WHY_MISSED
    if not model_names:
        lines.append(f"No profiles under {gpu_dir} yet.")
    sections = []
    for name in model_names:
        sections += model_section(load_model_config(name), hardware)
    lines += engine_summary() + sections
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
