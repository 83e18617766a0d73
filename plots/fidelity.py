"""Fidelity figures: simulated vs real execution (simulator/experiments/compare/ builds the comparisons).

  fidelity_iterations.png   per-iteration predicted vs measured time, one panel per policy
  fidelity_cdf_<trace>.png  measured (solid) and simulated (dashed) CDFs of TTFT, TBT and E2E, a row per
                            policy, a colour per load
  fidelity_errors.png       signed error of median TTFT, P99 TBT and median E2E against load
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator

from plots.common import new_figure, policy_color, save_figure, style_axes
from plots.latency_cdf import empirical_cdf

KIND_COLORS = {"prefill": "#D55E00", "decode": "#0072B2", "mixed": "#009E73"}
LOAD_COLORS = ["#56B4E9", "#E69F00", "#CC79A7", "#000000"]
POLICY_ORDER = ["vllm", "sarathi512", "sarathi2048", "orca"]  # plan labels, in the report's order
MARKERS = ["o", "s", "^", "D", "v"]


def _policy_base(label: str) -> str:
    """'sarathi512' -> 'sarathi' (for the shared policy colours)."""
    return label.rstrip("0123456789")


def _ordered(labels) -> list[str]:
    """Policy labels in POLICY_ORDER, unknown ones after them alphabetically."""
    labels = set(labels)
    return [p for p in POLICY_ORDER if p in labels] + sorted(labels - set(POLICY_ORDER))


def _plain_log_ticks(ax, axis: str = "both") -> None:
    """Log axes labelled 5, 10, 20, 50 ... instead of 2x10^1."""
    for name in ("x", "y") if axis == "both" else (axis,):
        target = ax.xaxis if name == "x" else ax.yaxis
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def iteration_scatter_figure(comparisons):
    """Predicted vs measured iteration time (ms), log-log, one panel per policy label."""
    policies = _ordered(c.labels["policy"] for c in comparisons)
    fig, axes = new_figure(ncols=max(len(policies), 1), width_in=4.2, height_in=4.0)
    for ax, policy in zip(axes[0], policies):
        lo, hi = np.inf, 0.0
        for kind, color in KIND_COLORS.items():
            measured, predicted = [], []
            for c in comparisons:
                if c.labels["policy"] != policy:
                    continue
                it = c.iterations[c.iterations["kind"] == kind]
                measured.append(it["duration_s"].to_numpy() * 1e3)
                predicted.append(it["predicted_s"].to_numpy() * 1e3)
            if not measured or not sum(len(m) for m in measured):
                continue
            m, p = np.concatenate(measured), np.concatenate(predicted)
            ax.scatter(m, p, s=4, alpha=0.35, color=color, label=f"{kind} ({len(m)})", rasterized=True)
            finite = np.isfinite(p) & (m > 0) & (p > 0)
            if finite.any():
                lo, hi = min(lo, m[finite].min(), p[finite].min()), max(hi, m[finite].max(), p[finite].max())
        if hi > 0:
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
            ax.plot([lo, hi], [lo * 1.05, hi * 1.05], color="grey", lw=0.6, ls=":")
            ax.plot([lo, hi], [lo / 1.05, hi / 1.05], color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        style_axes(ax, "measured iteration (ms)", "predicted (ms)", f"{policy} (dotted: +-5 %)")
        ax.legend(fontsize=7, loc="upper left")
    return fig


def latency_cdf_grid_figure(comparisons, trace: str):
    """Rows: policies; columns: TTFT, TBT, E2E. Solid = measured, dashed = simulated; colour = load."""
    runs = [c for c in comparisons if c.labels["trace"] == trace]
    policies = _ordered(c.labels["policy"] for c in runs)
    panels = [("ttft_s", "TTFT (s)", 1.0), ("tbt_s", "TBT (ms)", 1e3), ("e2e_s", "E2E (s)", 1.0)]
    fig, axes = new_figure(ncols=3, nrows=max(len(policies), 1), width_in=4.0, height_in=2.9)
    for row, policy in zip(axes, policies):
        mine = sorted((c for c in runs if c.labels["policy"] == policy), key=lambda c: c.labels["load"])
        for ax, (metric, xlabel, scale) in zip(row, panels):
            for i, c in enumerate(mine):
                color = LOAD_COLORS[i % len(LOAD_COLORS)]
                load = c.labels["load"]
                for source, style in (("measured", "-"), ("simulated", "--")):
                    x, y = empirical_cdf(c.samples[source][metric] * scale)
                    label = f"{load:.0%} {source}" if np.isfinite(load) else f"{c.name} {source}"
                    ax.step(x, y, where="post", color=color, ls=style, lw=1.1, label=label)
            if metric == "tbt_s":
                ax.set_xscale("log")
                _plain_log_ticks(ax, "x")
            style_axes(ax, xlabel, "CDF", f"{policy}: {xlabel.split()[0]}")
        row[0].legend(fontsize=6, loc="lower right")
    return fig


def error_vs_load_figure(comparisons):
    """Signed error (%) of the three target metrics against load, one line per (trace, policy)."""
    metrics = [("ttft_s_p50", "median TTFT"), ("tbt_s_p99", "P99 TBT"), ("e2e_s_p50", "median E2E")]
    fig, axes = new_figure(ncols=3, width_in=4.4, height_in=3.4)
    traces = sorted({c.labels["trace"] for c in comparisons}, key=lambda t: (t != "conversation", t))
    policies = _ordered(c.labels["policy"] for c in comparisons)
    groups = [(t, p) for t in traces for p in policies
              if any((c.labels["trace"], c.labels["policy"]) == (t, p) for c in comparisons)]
    for ax, (key, title) in zip(axes[0], metrics):
        for trace, policy in groups:
            i = policies.index(policy)
            mine = sorted((c for c in comparisons
                           if (c.labels["trace"], c.labels["policy"]) == (trace, policy)),
                          key=lambda c: c.labels["load"])
            loads = [c.labels["load"] * 100 for c in mine]
            errors = [c.errors()[key] for c in mine]
            ax.plot(loads, errors, marker=MARKERS[i % len(MARKERS)], ms=4,
                    color=policy_color(_policy_base(policy), i), ls="-" if trace == traces[0] else "--",
                    label=f"{trace} {policy}")
        ax.axhspan(-10, 10, color="grey", alpha=0.12, lw=0)
        ax.axhline(0, color="black", lw=0.6)
        style_axes(ax, "load (% of simulated capacity)", "error (%), simulated vs measured", title)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


def write_fidelity_figures(comparisons, out_dir) -> list[Path]:
    """All fidelity figures as PNG files in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    paths = [save_figure(iteration_scatter_figure(comparisons), out_dir / "fidelity_iterations.png"),
             save_figure(error_vs_load_figure(comparisons), out_dir / "fidelity_errors.png")]
    for trace in sorted({c.labels["trace"] for c in comparisons}):
        figure = latency_cdf_grid_figure(comparisons, trace)
        paths.append(save_figure(figure, out_dir / f"fidelity_cdf_{trace}.png"))
    return paths
