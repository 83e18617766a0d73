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
    fig, axes = new_figure(ncols=len(panels), width_in=7.5, height_in=4.6)  # room for the label column
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
                label_frontier(ax, front[x_column], front[y_column], front[label_column])
        title = "Capacity per GPU vs latency" + ("" if panel is None else f" ({panel} SLOs)")
        style_axes(ax, xlabel, ylabel, title)
        ax.legend(fontsize=8)
    return fig


def label_heights(num_labels: int, top: float = 0.95, bottom: float = 0.05) -> np.ndarray:
    """Evenly spaced heights (axes fraction, top first) for `num_labels` labels in one column."""
    return np.linspace(top, bottom, num_labels) if num_labels > 1 else np.array([0.5])


def label_frontier(ax, x: pd.Series, y: pd.Series, texts: pd.Series) -> None:
    """Name each frontier point in a column just right of the axes, joined to its point by a thin line.
    Labels next to their points overlapped wherever frontier points sit close together; in a column,
    evenly spaced and in the points' top-to-bottom order, they never do, and the lines do not cross."""
    order = np.argsort(-np.asarray(y, dtype=float), kind="stable")
    for height, index in zip(label_heights(len(order)), order):
        ax.annotate(str(texts.iloc[index]), xy=(x.iloc[index], y.iloc[index]), xytext=(1.03, height),
                    textcoords="axes fraction", ha="left", va="center", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6})
