"""Capacity vs chunk size (token budget), one line per chunked policy and one panel per SLO set.

Policies without a chunk size (Orca, vLLM) are horizontal dashed lines: their capacity does not
depend on the x axis, and drawing them across it makes the comparison immediate.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from plots.common import new_figure, policy_color, policy_label, style_axes


def capacity_vs_chunk_figure(
    table: pd.DataFrame,
    panel_column: str = "slo",
    value_column: str = "capacity_qps",
    ylabel: str = "capacity (requests/s)",
) -> Figure:
    """`table` has columns policy, chunk_size (NaN for policies without one), `panel_column` and
    `value_column`; one row per configuration. Several rows for the same (panel, policy, chunk) —
    e.g. other axes of a sweep — are reduced to their best value."""
    panels = list(dict.fromkeys(table[panel_column])) if panel_column in table else [None]
    fig, axes = new_figure(ncols=len(panels), width_in=5.2, sharey=False)
    chunks_all = sorted(table["chunk_size"].dropna().unique()) if "chunk_size" in table else []
    for ax, panel in zip(axes[0], panels):
        rows = table if panel is None else table[table[panel_column] == panel]
        for i, (policy, group) in enumerate(rows.groupby("policy", sort=False)):
            color = policy_color(policy, i)
            chunked = group.dropna(subset=["chunk_size"]) if "chunk_size" in group else group.iloc[:0]
            if len(chunked):
                best = chunked.groupby("chunk_size")[value_column].max().sort_index()
                ax.plot(best.index, best.values, marker="o", color=color, linewidth=2,
                        label=policy_label(policy))
            else:
                ax.axhline(group[value_column].max(), color=color, linestyle="--", linewidth=2,
                           label=policy_label(policy))
        if chunks_all:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(chunks_all))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{int(c)}" for c in chunks_all])
        ax.set_ylim(bottom=0)
        style_axes(ax, "chunk size / token budget (tokens)", ylabel, None if panel is None else str(panel))
        ax.legend(fontsize=8, loc="best")
    return fig


def best_per_group(table: pd.DataFrame, group_columns: list[str], value_column: str) -> pd.DataFrame:
    """The row with the highest `value_column` for each group (NaN values never win)."""
    ranked = table.dropna(subset=[value_column]).sort_values(value_column, ascending=False)
    return ranked.drop_duplicates(subset=group_columns).sort_values(group_columns).reset_index(drop=True)


def capacity_bar_figure(table: pd.DataFrame, panel_column: str = "slo", value_column: str = "capacity_qps",
                        ylabel: str = "capacity (requests/s)") -> Figure:
    """Best capacity per policy as bars, one panel per SLO set (the Sarathi-Serve paper's Figure 1 view)."""
    panels = list(dict.fromkeys(table[panel_column]))
    fig, axes = new_figure(ncols=len(panels), width_in=4.2)
    for ax, panel in zip(axes[0], panels):
        best = best_per_group(table[table[panel_column] == panel], ["policy"], value_column)
        x = np.arange(len(best))
        bars = ax.bar(x, best[value_column], color=[policy_color(p, i) for i, p in enumerate(best["policy"])])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(x, [policy_label(p) for p in best["policy"]])
        style_axes(ax, "policy", ylabel, str(panel))
    return fig
