"""What every figure shares: the Agg backend, one colour per policy, and how a figure is saved."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (CI, remote machines)
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

# Fixed colours so a policy looks the same in every figure (colour-blind-safe Okabe-Ito palette).
POLICY_COLORS = {
    "orca": "#E69F00",
    "vllm": "#0072B2",
    "sarathi": "#009E73",
    "faster_transformer": "#CC79A7",
    "fastertransformer": "#CC79A7",
    "disaggregated": "#D55E00",
}
FALLBACK_COLORS = ["#56B4E9", "#F0E442", "#000000", "#999999"]
POLICY_LABELS = {"orca": "Orca", "vllm": "vLLM", "sarathi": "Sarathi-Serve",
                 "faster_transformer": "FasterTransformer", "disaggregated": "Disaggregated"}


def policy_color(policy: str, index: int = 0) -> str:
    """The policy's colour (case-insensitive), or a fallback chosen by `index` for unknown names."""
    return POLICY_COLORS.get(str(policy).lower(), FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def policy_label(policy: str) -> str:
    """Display name of a policy ('sarathi' -> 'Sarathi-Serve'); unknown names pass through."""
    return POLICY_LABELS.get(str(policy).lower(), str(policy))


def new_figure(ncols: int = 1, nrows: int = 1, width_in: float = 5.0, height_in: float = 3.8, **kwargs):
    """A figure with a grid of axes sized for reading on a screen (`width_in` per panel)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in * ncols, height_in * nrows), squeeze=False,
                             **kwargs)
    return fig, axes


def new_figure_with_legend_strip(ncols: int, width_in: float, height_in: float, legend_height_in: float):
    """(figure, [[axes per column]], legend axes): a row of panels over a strip as wide as the figure
    that holds the legend (its frame and ticks off), so a long legend never covers data."""
    fig = plt.figure(figsize=(width_in * ncols, height_in + legend_height_in))
    grid = fig.add_gridspec(2, ncols, height_ratios=[height_in, legend_height_in])
    axes = [[fig.add_subplot(grid[0, column]) for column in range(ncols)]]
    legend_ax = fig.add_subplot(grid[1, :])
    legend_ax.axis("off")
    return fig, axes, legend_ax


def save_figure(fig: Figure, path: str | Path, dpi: int = 130) -> Path:
    """Write `fig` as PNG (tight layout) and close it, so long CLI runs do not accumulate figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def style_axes(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Label axes (with units) and add a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
