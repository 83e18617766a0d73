"""Latency CDFs: TTFT, TBT and end-to-end latency, one curve per policy (or run)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from plots.common import new_figure, policy_color, style_axes


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


def latency_cdf_figure(samples: list[LatencySample], slo_lines_s: dict[str, float] | None = None) -> Figure:
    """Three CDF panels. `slo_lines_s` may mark a bound per panel, e.g. {"tbt_s": 0.1}."""
    fig, axes = new_figure(ncols=3, width_in=4.6)
    # Colour says the policy; a second run of the same policy gets another line style.
    seen: dict[str, int] = {}
    styles = []
    for sample in samples:
        styles.append(LINE_STYLES[seen.get(sample.policy, 0) % len(LINE_STYLES)])
        seen[sample.policy] = seen.get(sample.policy, 0) + 1
    for (attribute, title, xlabel, scale, ylabel), ax in zip(PANELS, axes[0]):
        positive_min = np.inf
        for i, sample in enumerate(samples):
            x, y = empirical_cdf(getattr(sample, attribute) * scale)
            if len(x) == 0:
                continue
            positive_min = min(positive_min, x[x > 0].min() if (x > 0).any() else np.inf)
            # Thin out the points: a CDF of 100k gaps needs only ~2k to look identical.
            step = max(1, len(x) // 2000)
            ax.plot(np.r_[x[::step], x[-1]], np.r_[y[::step], y[-1]], color=policy_color(sample.policy, i),
                    label=sample.label, linewidth=1.8, drawstyle="steps-post", linestyle=styles[i])
        if slo_lines_s and attribute in slo_lines_s:
            ax.axvline(slo_lines_s[attribute] * scale, color="grey", linestyle="--", linewidth=1, label="SLO")
        if np.isfinite(positive_min):
            ax.set_xscale("log")
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, 1.01)
        style_axes(ax, xlabel, ylabel, title)
    axes[0][0].legend(loc="lower right", fontsize=8)
    return fig
