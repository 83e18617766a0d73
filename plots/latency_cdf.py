"""Latency CDFs: TTFT, TBT and end-to-end latency, one curve per policy (or run)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from plots.common import new_figure_with_legend_strip, policy_color, style_axes


@dataclass
class LatencySample:
    """One run's latencies (seconds): per request TTFT and E2E, and every inter-token gap."""

    label: str
    policy: str
    ttft_s: np.ndarray
    tbt_s: np.ndarray
    e2e_s: np.ndarray


def empirical_cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted finite values, fraction of values <= each): the step points of the empirical CDF."""
    values = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
    return values, np.arange(1, len(values) + 1) / max(len(values), 1)


LINE_STYLES = ["-", "--", ":", "-."]

# (attribute, panel title, x label, scale from seconds, y label)
PANELS = [
    ("ttft_s", "Time to first token", "TTFT (s)", 1.0, "fraction of requests"),
    ("tbt_s", "Time between tokens", "TBT (ms)", 1e3, "fraction of token gaps"),
    ("e2e_s", "End-to-end latency", "E2E latency (s)", 1.0, "fraction of requests"),
]


RUN_COLORS = [f"C{i}" for i in range(10)]
LEGEND_COLUMNS = 3
LEGEND_ROW_IN = 0.22  # height of one legend row (8 pt text)
LEGEND_ROW_CHARS = 190  # 8 pt characters that fit across the figure, line handles included


def legend_columns(labels: list[str]) -> int:
    """Columns for the legend strip: up to LEGEND_COLUMNS, fewer when long labels would not fit the width."""
    longest = max((len(label) for label in labels), default=1)
    return max(1, min(LEGEND_COLUMNS, len(labels), LEGEND_ROW_CHARS // (longest + 8)))


def curve_styles(policies: list[str]) -> list[tuple[str, str]]:
    """(colour, line style) per curve, no two alike (up to 40 curves). Colour says the policy and line
    style tells runs of one policy apart; where that would draw two curves alike (more runs of a policy
    than line styles, or more unknown policies than fallback colours), every run gets its own colour
    instead, and a new line style every ten runs."""
    seen: dict[str, int] = {}
    by_policy = []
    for i, policy in enumerate(policies):
        by_policy.append((policy_color(policy, i), LINE_STYLES[seen.get(policy, 0) % len(LINE_STYLES)]))
        seen[policy] = seen.get(policy, 0) + 1
    if len(set(by_policy)) == len(by_policy):
        return by_policy
    return [(RUN_COLORS[i % len(RUN_COLORS)], LINE_STYLES[i // len(RUN_COLORS) % len(LINE_STYLES)])
            for i in range(len(policies))]


def latency_cdf_figure(samples: list[LatencySample], slo_lines_s: dict[str, float] | None = None) -> Figure:
    """Three CDF panels side by side and, under them, one legend naming every run. The legend sits in
    its own strip, so it never covers a curve however many runs there are. `slo_lines_s` may mark a
    bound per panel, e.g. {"tbt_s": 0.1}."""
    entries = [sample.label for sample in samples] + (["SLO"] if slo_lines_s else [])
    columns = legend_columns(entries)
    legend_height_in = 0.3 + LEGEND_ROW_IN * -(-len(entries) // columns)
    fig, axes, legend_ax = new_figure_with_legend_strip(3, 4.6, 3.8, legend_height_in)
    styles = curve_styles([sample.policy for sample in samples])
    for (attribute, title, xlabel, scale, ylabel), ax in zip(PANELS, axes[0]):
        positive_min = np.inf
        for i, sample in enumerate(samples):
            x, y = empirical_cdf(getattr(sample, attribute) * scale)
            if len(x) == 0:
                continue
            positive_min = min(positive_min, x[x > 0].min() if (x > 0).any() else np.inf)
            # Thin out the points: a CDF of 100k gaps needs only ~2k to look identical.
            step = max(1, len(x) // 2000)
            color, linestyle = styles[i]
            ax.plot(np.r_[x[::step], x[-1]], np.r_[y[::step], y[-1]], color=color, label=sample.label,
                    linewidth=1.8, drawstyle="steps-post", linestyle=linestyle)
        if slo_lines_s and attribute in slo_lines_s:
            ax.axvline(slo_lines_s[attribute] * scale, color="grey", linestyle="--", linewidth=1, label="SLO")
        if np.isfinite(positive_min):
            ax.set_xscale("log")
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, 1.01)
        style_axes(ax, xlabel, ylabel, title)
    handles, labels = [], []
    for ax in axes[0]:  # every run once, and the SLO line if a panel has one
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle), labels.append(label)
    legend_ax.legend(handles, labels, loc="upper center", ncol=columns, fontsize=8, frameon=False)
    return fig
