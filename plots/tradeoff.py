"""The TTFT-TBT trade-off: at one common request rate, each configuration is a point (P99 TBT, TTFT);
the chunk sizes of a chunked policy join into a curve (small chunks: low TBT, higher TTFT).

The points come from capacity-search trials: every search starts at the same rates (initial rate
times powers of the growth factor), so configurations share trial rates without extra simulation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from plots.common import new_figure, policy_color, policy_label, style_axes


def common_rate(trials: pd.DataFrame, config_columns: list[str],
                latency_columns: tuple[str, ...] = ("ttft_s_p99", "tbt_s_p99")) -> float | None:
    """The rate to compare configurations at: among the rates the most configurations simulated with
    finite latencies, the highest at which all of them met their SLOs (else the lowest such rate).
    At that load every configuration shown is stable, so the plot compares schedules, not overload."""
    finite = trials[np.isfinite(trials[list(latency_columns)].astype(float)).all(axis=1)]
    if finite.empty:
        return None
    per_config = finite.drop_duplicates(config_columns + ["rate_qps"])
    counts = per_config.groupby("rate_qps").size()
    candidates = counts[counts == counts.max()].index
    if "feasible" in per_config:
        all_pass = per_config.groupby("rate_qps")["feasible"].all()
        passing = [rate for rate in candidates if all_pass[rate]]
        if passing:
            return float(max(passing))
        return float(min(candidates))
    return float(max(candidates))


def tradeoff_points(trials: pd.DataFrame, rate_qps: float, config_columns: list[str]) -> pd.DataFrame:
    """One row per configuration simulated at `rate_qps` (duplicates, e.g. the same configuration
    searched under two SLO sets, collapse: the simulation is the same)."""
    at_rate = trials[np.isclose(trials["rate_qps"], rate_qps)]
    return at_rate.drop_duplicates(config_columns).reset_index(drop=True)


def tradeoff_figure(points: pd.DataFrame, rate_qps: float, ttft_column: str = "ttft_s_p99",
                    tbt_column: str = "tbt_s_p99") -> Figure:
    """`points` has policy, chunk_size (NaN when none), and the two latency columns in seconds."""
    fig, axes = new_figure(width_in=6.0, height_in=4.4)
    ax = axes[0][0]
    for i, (policy, group) in enumerate(points.groupby("policy", sort=False)):
        color = policy_color(policy, i)
        group = group.sort_values("chunk_size") if "chunk_size" in group else group
        x, y = group[tbt_column].to_numpy() * 1e3, group[ttft_column].to_numpy()
        ax.plot(x, y, marker="o", color=color, linewidth=1.8, markersize=7, label=policy_label(policy),
                linestyle="-" if len(group) > 1 else "none")
        if "chunk_size" in group:
            for xi, yi, chunk in zip(x, y, group["chunk_size"]):
                if np.isfinite(chunk):
                    ax.annotate(f"{int(chunk)}", (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=8,
                                color=color)
    finite = np.isfinite(points[[tbt_column, ttft_column]].to_numpy(dtype=float))
    ttft = points[ttft_column].to_numpy(dtype=float)
    # Log scale only when TTFTs span more than a decade; otherwise linear ticks read better.
    if finite.all() and (ttft > 0).all() and ttft.max() > 10 * ttft.min():
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.2, not 2 x 10^-1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ttft_name = ttft_column.replace("ttft_s_p", "P")
    tbt_name = tbt_column.replace("tbt_s_p", "P")
    style_axes(ax, f"{tbt_name} time between tokens (ms)", f"{ttft_name} time to first token (s)",
               f"TTFT-TBT trade-off at {rate_qps:g} requests/s (labels: chunk size)")
    ax.legend(fontsize=8)
    return fig
