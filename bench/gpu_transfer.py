"""Validate the GPU transfer where both ends are measured; writes docs/gpu_transfer.md and
data/validation/gpu_transfer.json (the numbers run summaries quote).

    PYTHONPATH=. python bench/gpu_transfer.py                       # h100 -> h200 and h200 -> h100
    PYTHONPATH=. python bench/gpu_transfer.py pairs=h100:h200 models=llama-2-7b out=- json=-

For each pair (source:target) and each model profiled on both GPUs:
  op by op     every row of the source's ops.csv and attention.csv transferred (simulator/runtime/transfer.py)
               against the target's measured row of the same op, token count and TP degree (attention: the
               same composition), grouped by op family;
  whole forward  the runtime model fitted to the transferred tables, calibrated as the source's own fit
               (never on the target's forwards), against the target's measured forwards
               (data/validation/<target>/<model>/iterations.csv).
Beside each: the error of taking the source's times unchanged, to show what the transfer adds.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.schema import table_path
from simulator.config import load_hardware_config, load_model_config
from simulator.paths import DATA_DIR, PROFILES_DIR, REPO_ROOT
from simulator.runtime.cpu_overhead import kernels_only
from simulator.runtime.predictor import forward_times_ms, transferred_files, transferred_runtime
from simulator.runtime.tables import profile_files, read_iterations, read_meta, validation_csv
from simulator.runtime.transfer import transfer_attention, transfer_ops, transfer_pair

OP_FAMILIES = {
    "GEMM (qkv, out, up/gate, down)": ("qkv_proj", "attn_out_proj", "mlp_up_gate", "mlp_down"),
    "LM head": ("lm_head",),
    "norm, residual, activation, rope": ("rmsnorm", "residual_add", "act", "rope"),
    "embedding": ("embedding",),
    "sampling": ("sampling",),
}
TARGET_MEDIAN_PCT, TARGET_P95_PCT = 8.0, 15.0
DEFAULT_PAIRS = (("h100", "h200"), ("h200", "h100"))


def _errors(predicted, measured) -> np.ndarray:
    return (np.asarray(predicted, dtype=float) / np.asarray(measured, dtype=float) - 1.0) * 100.0


def _stats(signed: np.ndarray) -> dict:
    absolute = np.abs(signed)
    return {"rows": len(signed), "median_pct": float(np.median(absolute)),
            "p95_pct": float(np.percentile(absolute, 95)), "mean_signed_pct": float(np.mean(signed))}


def op_rows(model_name: str, source_name: str, target_name: str) -> pd.DataFrame:
    """One row per measured (op or attention launch) on both GPUs: family, transferred, untransferred and
    measured milliseconds."""
    source_hw, target_hw = load_hardware_config(source_name), load_hardware_config(target_name)
    model = load_model_config(model_name)
    source_files, target_files = profile_files(model, source_hw), profile_files(model, target_hw)
    ops_source, ops_target = pd.read_csv(source_files.ops_csv), pd.read_csv(target_files.ops_csv)
    attention_source = pd.read_csv(source_files.attention_csv)
    source, target = transfer_pair(source_hw, target_hw, read_meta(source_files.meta_json), attention_source)
    frames = []
    merged = transfer_ops(ops_source, source, target).merge(
        ops_target, on=["tp", "op", "num_tokens"], suffixes=("_transferred", "_measured"))
    merged = merged.merge(ops_source[["tp", "op", "num_tokens", "time_ms"]].rename(columns={"time_ms": "time_ms_source"}),
                          on=["tp", "op", "num_tokens"])
    family_of = {op: family for family, ops in OP_FAMILIES.items() for op in ops}
    merged["family"] = merged["op"].map(family_of)
    frames.append(merged)
    attention = transfer_attention(attention_source, source, target).merge(
        pd.read_csv(target_files.attention_csv), on=["tp", "composition", "kind"], suffixes=("_transferred", "_measured"))
    attention = attention.merge(attention_source[["tp", "composition", "kind", "time_ms"]].rename(
        columns={"time_ms": "time_ms_source"}), on=["tp", "composition", "kind"])
    attention["family"] = "attention " + attention["kind"]
    frames.append(attention)
    out = pd.concat([f[["family", "tp", "time_ms_transferred", "time_ms_measured", "time_ms_source"]] for f in frames])
    out["model"] = model_name
    return out


def whole_forward(model_name: str, source_name: str, target_name: str, cache_directory: Path | None = None) -> dict | None:
    """Transferred vs measured whole forwards of the target (None when it measured none for the model)."""
    model = load_model_config(model_name)
    target_hw = dataclasses.replace(load_hardware_config(target_name), transfer_from=source_name)
    path = validation_csv(model, target_hw)
    if not path.exists():
        return None
    frame = read_iterations(path)
    tp = int(frame["tp"].mode()[0])
    frame = frame[frame["tp"] == tp].reset_index(drop=True)
    files = transferred_files(model, target_hw, PROFILES_DIR, cache_directory)
    fitted = transferred_runtime(model, target_hw, tp, files, PROFILES_DIR, cache_directory, progress=False)
    predicted = forward_times_ms(fitted, model, frame, kernels_only("fused_varlen"))
    measured = frame["time_ms"].to_numpy(dtype=float)
    result = {"model": model_name, "tp": tp, **_stats(_errors(predicted, measured)),
              "calibration": fitted.calibration_source}
    source_path = validation_csv(model, load_hardware_config(source_name))
    if source_path.exists():  # the same compositions measured on the source: the untransferred baseline
        source_frame = read_iterations(source_path)
        key = lambda f: f["composition"].map(lambda c: json.dumps(c.tolist())) + "|" + f["tp"].astype(str)
        source_ms = dict(zip(key(source_frame), source_frame["time_ms"]))
        keys = key(frame)
        same = keys.isin(source_ms.keys()).to_numpy()
        if same.any():
            baseline = _stats(_errors([source_ms[k] for k in keys[same]], measured[same]))
            result["untransferred"] = baseline
    return result


def report(pairs, model_names: list[str] | None = None) -> tuple[list[str], dict]:
    """(markdown lines, JSON summary)."""
    from simulator.runtime.report import library_versions

    lines, summary = [f"Made with {library_versions()}.", ""], {}
    for source_name, target_name in pairs:
        profiled = sorted(p.name for p in (PROFILES_DIR / target_name).iterdir() if table_path(p, "ops.csv").exists())
        models = [m for m in (model_names or profiled) if table_path(PROFILES_DIR / source_name / m, "ops.csv").exists()
                  and m in profiled]
        rows = pd.concat([op_rows(m, source_name, target_name) for m in models])
        pair = f"{source_name} -> {target_name}"
        lines += [f"## {source_name.upper()} tables -> {target_name.upper()} (measured)", "",
                  (f"Op by op: every row both GPUs measured ({', '.join(models)}; every TP degree profiled). "
                  "'unchanged' takes the source's time as is."), "",
                  "| op family | rows | median % | P95 % | mean signed % | unchanged: median % | unchanged: P95 % |",
                  "|---|---|---|---|---|---|---|"]
        families = {}
        for family in [*OP_FAMILIES, "attention prefill", "attention decode", "attention mixed"]:
            sub = rows[rows["family"] == family]
            if sub.empty:
                continue
            s = _stats(_errors(sub["time_ms_transferred"], sub["time_ms_measured"]))
            u = _stats(_errors(sub["time_ms_source"], sub["time_ms_measured"]))
            families[family] = s
            lines.append(f"| {family} | {s['rows']} | {s['median_pct']:.1f} | {s['p95_pct']:.1f} | "
                         f"{s['mean_signed_pct']:+.1f} | {u['median_pct']:.1f} | {u['p95_pct']:.1f} |")
        forwards = [f for f in (whole_forward(m, source_name, target_name) for m in models) if f]
        lines += ["", (f"Whole forwards: the runtime model fitted to the transferred tables, calibrated as the "
                  f"{source_name} fit of the model, against {target_name}'s measured forwards (one CUDA graph, no "
                  f"host terms). Target: median <= {TARGET_MEDIAN_PCT:g} %, P95 <= {TARGET_P95_PCT:g} %."), "",
                  ("| model | tp | forwards | median % | P95 % | mean signed % | meets target | unchanged: median % "
                  "| unchanged: P95 % |"), "|---|---|---|---|---|---|---|---|---|"]
        for f in forwards:
            u = f.get("untransferred")
            meets = f["median_pct"] <= TARGET_MEDIAN_PCT and f["p95_pct"] <= TARGET_P95_PCT
            lines.append(f"| {f['model']} | {f['tp']} | {f['rows']} | {f['median_pct']:.1f} | {f['p95_pct']:.1f} | "
                         f"{f['mean_signed_pct']:+.1f} | {'yes' if meets else '**no**'} | "
                         f"{u['median_pct']:.1f} | {u['p95_pct']:.1f} |" if u else
                         f"| {f['model']} | {f['tp']} | {f['rows']} | {f['median_pct']:.1f} | {f['p95_pct']:.1f} | "
                         f"{f['mean_signed_pct']:+.1f} | {'yes' if meets else '**no**'} | - | - |")
        lines.append("")
        summary[pair] = {
            "op_families": families, "whole_forward": forwards,
            "whole_forward_median_pct": max((f["median_pct"] for f in forwards), default=None),
            "whole_forward_p95_pct": max((f["p95_pct"] for f in forwards), default=None)}
    return lines, summary


MARKER = "<!-- Everything below is written by bench/gpu_transfer.py; edit the text above it by hand. -->"


def splice(doc: Path, lines: list[str]) -> str:
    """The text of `doc` above MARKER (kept as written by hand), the marker, then `lines`."""
    above = doc.read_text().split(MARKER)[0] if doc.exists() else "# GPU transfer\n\n"
    return above + MARKER + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    pairs = [tuple(p.split(":")) for p in args["pairs"].split(",")] if "pairs" in args else list(DEFAULT_PAIRS)
    models = args["models"].split(",") if "models" in args else None
    out = args.get("out", str(REPO_ROOT / "docs" / "gpu_transfer.md"))
    json_out = args.get("json", str(DATA_DIR / "validation" / "gpu_transfer.json"))
    lines, summary = report(pairs, models)
    if out == "-":
        print("\n".join(lines))
    else:
        Path(out).write_text(splice(Path(out), lines))
    if json_out == "-":
        print(json.dumps(summary, indent=1))
    else:
        Path(json_out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
