"""The cost-latency Pareto frontier of a sweep: capacity per GPU against latency at that capacity."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots.common import new_figure, policy_color, policy_label, style_axes


def pareto_front(table: pd.DataFrame, x_column: str, y_column: str) -> pd.DataFrame:
    """Rows not dominated by any other: no row has x at least as high AND y at least as low with one
    strictly better. `x_column` is maximised (QPS per GPU), `y_column` minimised (latency). Returned
    sorted by x ascending; rows with NaN in either column are ignored."""
    rows = table.dropna(subset=[x_column, y_column])
    rows = rows[np.isfinite(rows[y_column].astype(float))]
    # Sweep from the highest x down; a row is on the front when its y beats every y seen so far.
    ordered = rows.sort_values([x_column, y_column], ascending=[False, True])
    best_y = np.inf
    keep = []
    for index, y in zip(ordered.index, ordered[y_column]):
        if y < best_y:
            keep.append(index)
            best_y = y
    return rows.loc[keep].sort_values(x_column).reset_index(drop=True)


def pareto_figure(table: pd.DataFrame, x_column: str = "qps_per_gpu", y_column: str = "ttft_s_p99",
                  xlabel: str = "capacity per GPU (requests/s/GPU)", ylabel: str = "P99 TTFT at capacity (s)",
                  label_column: str = "label") -> Figure:
    """Every configuration as a dot coloured by policy; the frontier as a line with its points named."""
    fig, axes = new_figure(width_in=6.5, height_in=4.6)
    ax = axes[0][0]
    for i, (policy, group) in enumerate(table.groupby("policy", sort=False)):
        ax.scatter(group[x_column], group[y_column], color=policy_color(policy, i), alpha=0.6, s=25,
                   label=policy_label(policy))
    front = pareto_front(table, x_column, y_column)
    if len(front):
        ax.plot(front[x_column], front[y_column], color="black", linewidth=1.2, marker="D", markersize=5,
                markerfacecolor="none", label="Pareto frontier")
        if label_column in front:
            for x, y, text in zip(front[x_column], front[y_column], front[label_column]):
                ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    style_axes(ax, xlabel, ylabel, "Capacity per GPU vs latency")
    ax.legend(fontsize=8)
    return fig
