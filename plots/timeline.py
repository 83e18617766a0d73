"""Batch size and KV-cache usage over simulated time, from a run's iterations table."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from plots.common import FALLBACK_COLORS, new_figure, style_axes

MAX_REPLICAS_DRAWN = 4  # more lines than this stop being readable


def batch_kv_timeline_figure(iterations: pd.DataFrame, kv_blocks_total: int | None = None,
                             title: str | None = None) -> Figure:
    """Two stacked panels sharing the time axis: requests per batch, and KV blocks in use (as % of
    `kv_blocks_total` when given). Stage-0 rows only, so each batch counts once; one line per
    replica (the first few)."""
    first_stage = iterations[iterations["stage"] == 0]
    fig, axes = new_figure(nrows=2, width_in=9.0, height_in=2.8, sharex=True)
    batch_ax, kv_ax = axes[0][0], axes[1][0]
    replicas = sorted(first_stage["replica_id"].unique())[:MAX_REPLICAS_DRAWN]
    for i, replica in enumerate(replicas):
        rows = first_stage[first_stage["replica_id"] == replica].sort_values("start_s")
        color = FALLBACK_COLORS[0] if len(replicas) == 1 else f"C{i}"
        label = f"replica {replica}"
        batch_ax.plot(rows["start_s"], rows["batch_size"], color=color, linewidth=0.8, drawstyle="steps-post",
                      label=label)
        kv = rows["kv_blocks_used"] * (100.0 / kv_blocks_total if kv_blocks_total else 1.0)
        kv_ax.plot(rows["start_s"], kv, color=color, linewidth=0.8, drawstyle="steps-post", label=label)
    style_axes(batch_ax, "", "batch size (requests)", title)
    kv_label = "KV cache used (% of blocks)" if kv_blocks_total else "KV cache used (blocks)"
    style_axes(kv_ax, "simulated time (s)", kv_label)
    if kv_blocks_total:
        kv_ax.set_ylim(0, 105)
    batch_ax.set_ylim(bottom=0)
    if len(replicas) > 1:
        batch_ax.legend(fontsize=8, loc="upper right")
    return fig
