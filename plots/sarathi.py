"""The Sarathi-Serve evaluation shape on our H100 profiles: capacity of Orca, vLLM and Sarathi-Serve
under strict and relaxed P99 TBT SLOs, for Mistral-7B (1 GPU) and Yi-34B (TP2).

    python -m plots.sarathi            # run both sweeps (resuming), then write the table and figures
    python -m plots.sarathi --no-run   # only rebuild the table and figures from existing results

Sweeps: conf/sweep/sarathi_mistral7b.yaml and sarathi_yi34b.yaml, results in sweeps/<name>/.
Writes docs/figures/sarathi_capacity.png, docs/figures/sarathi_capacity_vs_chunk_<model>.png and the
table docs/figures/sarathi_table.md (pasted into docs/sarathi_reproduction.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from plots.capacity import capacity_vs_chunk_figure
from plots.common import new_figure, policy_color, policy_label, save_figure, style_axes
from simulator.paths import CONF_DIR, REPO_ROOT

SPACES = ("sarathi_mistral7b", "sarathi_yi34b")
# The paper's token budget per kind of SLO set (REFERENCES.md): 512 under strict, 2048 under relaxed.
PAPER_CHUNK = {"strict": 512, "relaxed": 2048}


def slo_kind(slo_name: str) -> str:
    """"strict" or "relaxed" for the sweeps' SLO sets (conf/slo/sarathi_strict_mistral7b.yaml, ...; older
    results named them strict/relaxed), else the name as it is."""
    return next((kind for kind in PAPER_CHUNK if kind in str(slo_name).split("_")), str(slo_name))
POLICY_ORDER = ("orca", "vllm", "sarathi")


def load_results(sweeps_dir: Path) -> pd.DataFrame:
    """The results tables of both sweeps, successful points only."""
    tables = [pd.read_parquet(sweeps_dir / name / "results.parquet") for name in SPACES
              if (sweeps_dir / name / "results.parquet").exists()]
    if not tables:
        raise FileNotFoundError(f"no results under {sweeps_dir}/{{{','.join(SPACES)}}}; run without --no-run")
    table = pd.concat(tables, ignore_index=True)
    return table[table["status"] == "ok"].reset_index(drop=True)


def reproduction_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, workload, SLO set): capacity of Orca, vLLM, Sarathi at the paper's chunk
    size and at its best chunk size, and Sarathi's ratios over the baselines."""
    rows = []
    for (model, workload, slo), group in results.groupby(["model", "workload", "slo_name"], sort=True):
        def capacity(policy, chunk=None, group=group):
            rows_ = group[group["policy"] == policy]
            if chunk is not None:
                rows_ = rows_[rows_["chunk_size"] == chunk]
            return float(rows_["capacity_qps"].max()) if len(rows_) else np.nan

        sarathi = group[group["policy"] == "sarathi"]
        best = sarathi.loc[sarathi["capacity_qps"].idxmax()] if len(sarathi) else None
        paper = capacity("sarathi", PAPER_CHUNK.get(slo_kind(slo)))
        orca, vllm = capacity("orca"), capacity("vllm")
        tbt_bound = _tbt_bound(group)
        rows.append({
            "model": model, "workload": workload, "slo": f"{slo} ({tbt_bound:g} s)" if tbt_bound else slo,
            "gpus": int(group["num_gpus"].iloc[0]),
            "orca": orca, "vllm": vllm, "sarathi": paper,
            "sarathi_best": float(best["capacity_qps"]) if best is not None else np.nan,
            "best_chunk": int(best["chunk_size"]) if best is not None else None,
            "sarathi_over_vllm": paper / vllm if vllm > 0 else np.inf,
            "sarathi_over_orca": paper / orca if orca > 0 else np.inf,
        })
    return pd.DataFrame(rows)


def _tbt_bound(group: pd.DataFrame) -> float | None:
    """The P99 TBT bound of this SLO set, read back from the point's overrides: the conf/slo file they
    choose (slo=sarathi_strict_mistral7b), or inline objectives (slo.slos=[...], older sweeps)."""
    import re

    for overrides in group.get("overrides", []):
        match = re.search(r"metric:tbt_s,percentile:99,max_s:([0-9.]+)", str(overrides))
        if match:
            return float(match.group(1))
        chosen = re.search(r"(?:^|[\s'\"])slo=([\w-]+)", str(overrides))
        if chosen and (CONF_DIR / "slo" / f"{chosen.group(1)}.yaml").exists():
            import yaml

            slos = yaml.safe_load((CONF_DIR / "slo" / f"{chosen.group(1)}.yaml").read_text())["slos"]
            bounds = [o["max_s"] for o in slos if o["metric"] == "tbt_s" and o["percentile"] == 99]
            if bounds:
                return float(bounds[0])
    return None


def table_markdown(table: pd.DataFrame) -> str:
    """The reproduction table as Markdown (capacities in requests/s)."""
    def number(x, digits=2):
        if x is None or (isinstance(x, float) and np.isnan(x)):
            return "-"
        return "inf" if np.isinf(x) else f"{x:.{digits}f}"

    lines = [("| model (GPUs) | workload | P99 TBT SLO | Orca | vLLM | Sarathi-Serve | Sarathi / vLLM | "
             "Sarathi / Orca | Sarathi, best chunk |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in table.to_dict("records"):
        lines.append(
            f"| {row['model']} ({row['gpus']}) | {row['workload']} | {row['slo']} | {number(row['orca'])} | "
            f"{number(row['vllm'])} | {number(row['sarathi'])} | {number(row['sarathi_over_vllm'], 1)}x | "
            f"{number(row['sarathi_over_orca'], 1)}x | {number(row['sarathi_best'])} (chunk {row['best_chunk']}) |")
    return "\n".join(lines) + "\n"


def capacity_bars_figure(table: pd.DataFrame):
    """Grouped bars: one panel per model, groups of (workload, SLO), a bar per policy."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = new_figure(ncols=len(models), width_in=6.0, height_in=4.2)
    for ax, model in zip(axes[0], models):
        rows = table[table["model"] == model].reset_index(drop=True)
        x = np.arange(len(rows))
        width = 0.26
        for i, policy in enumerate(POLICY_ORDER):
            bars = ax.bar(x + (i - 1) * width, rows[policy], width, color=policy_color(policy),
                          label=policy_label(policy))
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        labels = [f"{w.replace('_poisson', '')}\n{slo_kind(s.split(' ')[0])}"
                  for w, s in zip(rows["workload"], rows["slo"])]
        ax.set_xticks(x, labels, fontsize=8)
        gpus = int(rows["gpus"].iloc[0])
        style_axes(ax, "workload / SLO set", "capacity (requests/s)", f"{model}, {gpus}x H100")
        ax.legend(fontsize=8)
    return fig


def write_outputs(results: pd.DataFrame, docs_dir: Path) -> list[Path]:
    figures_dir = docs_dir / "figures"
    table = reproduction_table(results)
    written = [save_figure(capacity_bars_figure(table), figures_dir / "sarathi_capacity.png")]
    for model, group in results.groupby("model"):
        for workload, rows in group.groupby("workload"):
            fig = capacity_vs_chunk_figure(rows.assign(slo=rows["slo_name"]))
            fig.suptitle(f"{model}, {workload}: capacity vs chunk size")
            written.append(save_figure(fig, figures_dir / f"sarathi_capacity_vs_chunk_{model}_{workload}.png"))
    table_path = figures_dir / "sarathi_table.md"
    table_path.write_text(table_markdown(table))
    written.append(table_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="do not run the sweeps; use existing results")
    parser.add_argument("--sweeps-dir", type=Path, default=REPO_ROOT / "sweeps")
    parser.add_argument("--docs-dir", type=Path, default=REPO_ROOT / "docs")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra override for every point, e.g. search.num_requests=500")
    args = parser.parse_args(argv)
    if not args.no_run:
        from simulator.experiments.sweep.cli import main as sweep_main

        for name in SPACES:
            sweep_args = [str(CONF_DIR / "sweep" / f"{name}.yaml"), "--out", str(args.sweeps_dir / name),
                          "--workers", str(args.workers)]
            for override in args.extra:
                sweep_args += ["--set", override]
            if sweep_main(sweep_args):
                return 1
    for path in write_outputs(load_results(args.sweeps_dir), args.docs_dir):
        print(path)
    print(table_markdown(reproduction_table(load_results(args.sweeps_dir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
