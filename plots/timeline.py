"""Batch size and KV-cache usage over simulated time, from a run's iterations table."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots.common import new_figure, style_axes

MAX_REPLICAS_DRAWN = 4  # more lines than this stop being readable


def binned_mean(start_s: np.ndarray, duration_s: np.ndarray, values: np.ndarray,
                bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, duration-weighted mean of `values` per bin) over fixed `bin_s`-second bins; bins
    without iterations are left out."""
    bins = np.floor((start_s - start_s.min()) / bin_s).astype(np.int64) if len(start_s) else start_s
    weights = np.bincount(bins, weights=duration_s)
    sums = np.bincount(bins, weights=duration_s * values)
    has = weights > 0
    centers = start_s.min() + (np.arange(len(weights)) + 0.5) * bin_s if len(start_s) else start_s
    return centers[has], sums[has] / weights[has]


def batch_kv_timeline_figure(iterations: pd.DataFrame, kv_blocks_total: int | None = None,
                             title: str | None = None) -> Figure:
    """Two stacked panels sharing the time axis: requests per batch, and KV blocks in use (as % of
    `kv_blocks_total` when given). Stage-0 rows only, so each batch counts once; one line per
    replica (the first few)."""
    first_stage = iterations[iterations["stage"] == 0]
    fig, axes = new_figure(nrows=2, width_in=9.0, height_in=2.8, sharex=True)
    batch_ax, kv_ax = axes[0][0], axes[1][0]
    replicas = sorted(first_stage["replica_id"].unique())[:MAX_REPLICAS_DRAWN]
    span_s = float(first_stage["start_s"].max() - first_stage["start_s"].min()) if len(first_stage) else 0.0
    for i, replica in enumerate(replicas):
        rows = first_stage[first_stage["replica_id"] == replica].sort_values("start_s")
        color = "C0" if len(replicas) == 1 else f"C{i}"
        label = f"replica {replica}"
        kv = rows["kv_blocks_used"] * (100.0 / kv_blocks_total if kv_blocks_total else 1.0)
        for ax, values in ((batch_ax, rows["batch_size"]), (kv_ax, kv)):
            # Every iteration, faint; and a time-weighted mean over 1/100 of the run, bold, to read trends.
            ax.plot(rows["start_s"], values, color=color, linewidth=0.5, alpha=0.35, drawstyle="steps-post")
            centers, means = binned_mean(rows["start_s"].to_numpy(), rows["duration_s"].to_numpy(),
                                         values.to_numpy(dtype=float), span_s / 100 if span_s > 0 else 1.0)
            ax.plot(centers, means, color=color, linewidth=1.8, label=label)
    style_axes(batch_ax, "", "batch size (requests)", title)
    kv_label = "KV cache used (% of blocks)" if kv_blocks_total else "KV cache used (blocks)"
    style_axes(kv_ax, "simulated time (s)", kv_label)
    if kv_blocks_total:
        kv_ax.set_ylim(0, 105)
    batch_ax.set_ylim(bottom=0)
    if len(replicas) > 1:
        batch_ax.legend(fontsize=8, loc="upper right")
    return fig
