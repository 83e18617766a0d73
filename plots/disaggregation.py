"""The DistServe comparison figure: SLO attainment vs per-GPU rate, one panel per workload, and goodput bars.

    python -m plots.disaggregation results/distserve_llama3_8b          # -> docs/disaggregation_<name>.png

Reads curve.csv and goodput.csv written by `python -m simulator.experiments.goodput` (docs/disaggregation.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from plots.common import new_figure, policy_color, save_figure, style_axes
from simulator.paths import REPO_ROOT

# Colour by family (disaggregated / vLLM / Sarathi), line style by variant.
LINE_STYLES = ["-", "--", ":", "-."]


def system_family(system: str) -> str:
    return next((f for f in ("disagg", "vllm", "sarathi") if system.startswith(f)), system)


def system_style(systems: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, line style) of each system: a colour per family, a new dash per further variant."""
    styles, seen = {}, {}
    for i, system in enumerate(systems):
        family = system_family(system)
        colour = policy_color("disaggregated" if family == "disagg" else family, i)
        styles[system] = (colour, LINE_STYLES[seen.get(family, 0) % len(LINE_STYLES)])
        seen[family] = seen.get(family, 0) + 1
    return styles


def attainment_figure(curve: pd.DataFrame, goodput: pd.DataFrame, target: float):
    """One attainment-vs-rate panel per workload, plus goodput-per-GPU bars."""
    workloads = list(dict.fromkeys(curve["workload"]))
    systems = list(dict.fromkeys(curve["system"]))
    styles = system_style(systems)
    fig, axes = new_figure(ncols=len(workloads) + 1, width_in=4.6)
    for ax, workload in zip(axes[0], workloads):
        rows = curve[curve["workload"] == workload]
        for system in systems:
            line = rows[rows["system"] == system].sort_values("rate_per_gpu")
            colour, dash = styles[system]
            ax.plot(line["rate_per_gpu"], 100 * line["attainment"], dash, marker="o", ms=3, color=colour,
                    label=system)
        ax.axhline(100 * target, color="grey", lw=0.8, ls="--")
        first = rows.iloc[0]
        style_axes(ax, "request rate per GPU (req/s)", "SLO attainment (%)",
                   f"{workload}: TTFT <= {first['ttft_max_s']:g} s and TPOT <= {1e3 * first['tpot_max_s']:g} ms")
        ax.set_ylim(0, 102)
    axes[0][0].legend(fontsize=8, loc="lower left")
    bars = axes[0][-1]
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = [goodput[(goodput["system"] == system) & (goodput["workload"] == w)]["goodput_per_gpu"]
                  for w in workloads]
        heights = [float(v.iloc[0]) if len(v) else 0.0 for v in values]
        colour, dash = styles[system]
        bars.bar([k + (i - (len(systems) - 1) / 2) * width for k in range(len(workloads))], heights, width,
                 color=colour, hatch=None if dash == "-" else "//", edgecolor="white", label=system)
    bars.set_xticks(range(len(workloads)), workloads)
    style_axes(bars, "workload", f"goodput per GPU (req/s at {target:.0%} attainment)", "goodput")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="directory written by python -m simulator.experiments.goodput")
    parser.add_argument("--out", default=None, help="PNG path (default docs/disaggregation_<name>.png)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    spec = json.loads((results / "experiment.json").read_text())
    curve, goodput = pd.read_csv(results / "curve.csv"), pd.read_csv(results / "goodput.csv")
    out = Path(args.out) if args.out else REPO_ROOT / "docs" / f"disaggregation_{spec['name']}.png"
    path = save_figure(attainment_figure(curve, goodput, float(spec.get("target", 0.9))), out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
