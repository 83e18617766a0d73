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
                  label_column: str = "label", panel_column: str = "slo_name") -> Figure:
    """One panel per SLO set (`panel_column`): every configuration as a dot coloured by policy, and the
    frontier as a line with its points named."""
    panels = list(dict.fromkeys(table[panel_column])) if panel_column in table else [None]
    fig, axes = new_figure(ncols=len(panels), width_in=6.0, height_in=4.6)
    for ax, panel in zip(axes[0], panels):
        rows = table if panel is None else table[table[panel_column] == panel]
        for i, (policy, group) in enumerate(rows.groupby("policy", sort=False)):
            ax.scatter(group[x_column], group[y_column], color=policy_color(policy, i), alpha=0.6, s=28,
                       label=policy_label(policy))
        front = pareto_front(rows, x_column, y_column)
        if len(front):
            ax.plot(front[x_column], front[y_column], color="black", linewidth=1.2, marker="D", markersize=6,
                    markerfacecolor="none", label="Pareto frontier")
            if label_column in front:
                middle = 0.5 * (rows[x_column].min() + rows[x_column].max())
                for x, y, text in zip(front[x_column], front[y_column], front[label_column]):
                    right_half = x > middle  # labels point inwards so they stay inside the axes
                    ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(-6 if right_half else 6, 6),
                                ha="right" if right_half else "left", fontsize=7)
        title = "Capacity per GPU vs latency" + ("" if panel is None else f" ({panel} SLOs)")
        style_axes(ax, xlabel, ylabel, title)
        ax.legend(fontsize=8)
    return fig
