"""Pipeline bubbles: the share of time each pipeline stage sits idle, per configuration.

For one replica, a stage's busy time is the sum of its iteration durations; its bubble fraction is
1 - busy / span, where the span runs from the replica's first stage-0 start to its last stage end.
Idle time when the replica has no work at all counts as bubble too, so compare configurations at
the same load.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots.common import new_figure, style_axes


def bubble_fractions(iterations: pd.DataFrame) -> pd.DataFrame:
    """One row per (replica_id, stage): busy_s, span_s, bubble_fraction (0 = always busy)."""
    end = iterations["start_s"] + iterations["duration_s"]
    frame = iterations.assign(end_s=end)
    span = frame.groupby("replica_id").agg(first_s=("start_s", "min"), last_s=("end_s", "max"))
    busy = frame.groupby(["replica_id", "stage"])["duration_s"].sum().rename("busy_s").reset_index()
    busy = busy.join(span, on="replica_id")
    busy["span_s"] = busy["last_s"] - busy["first_s"]
    busy["bubble_fraction"] = np.where(busy["span_s"] > 0, 1.0 - busy["busy_s"] / busy["span_s"], 0.0)
    return busy[["replica_id", "stage", "busy_s", "span_s", "bubble_fraction"]]


def pipeline_bubble_figure(bubbles_by_config: dict[str, pd.DataFrame]) -> Figure:
    """Grouped bars: for each configuration (label), the mean bubble fraction of each stage over
    replicas, in percent."""
    labels = list(bubbles_by_config)
    max_stages = max(int(b["stage"].max()) + 1 for b in bubbles_by_config.values())
    fig, axes = new_figure(width_in=max(5.0, 1.3 * len(labels) + 2), height_in=4.0)
    ax = axes[0][0]
    width = 0.8 / max_stages
    x = np.arange(len(labels))
    for stage in range(max_stages):
        values = []
        for label in labels:
            rows = bubbles_by_config[label]
            rows = rows[rows["stage"] == stage]
            values.append(100.0 * rows["bubble_fraction"].mean() if len(rows) else np.nan)
        bars = ax.bar(x + (stage - (max_stages - 1) / 2) * width, values, width, label=f"stage {stage}",
                      color=f"C{stage}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, [textwrap.fill(label, 18) for label in labels], fontsize=8)
    ax.set_ylim(0, 100)
    style_axes(ax, "configuration", "pipeline bubble (% of time idle)", "Pipeline bubbles per stage")
    ax.legend(fontsize=8, ncols=min(max_stages, 4))
    return fig
