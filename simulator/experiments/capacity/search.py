"""SLO capacity search: the highest request rate (QPS) at which one configuration meets its SLOs.

The search is a bracketing search over the arrival rate. Starting from `initial_rate_qps` it grows the
rate geometrically until a trial fails (or shrinks it until one passes), then bisects between the
highest passing and the lowest failing rate until they are within `tolerance` (relative) of each
other. Every trial replays the same requests (same seed) at a different rate, so the only thing that
changes between trials is the load; that keeps the feasible region monotone in practice.

A trial passes when every SLO holds on the measured requests (warm-up and cool-down trimmed) and no
more than `max_rejected_fraction` of them were rejected. A bound on the scheduling (queueing) delay
belongs in every SLO set: an overloaded queue grows without limit, and without that bound a short
trial could still look fine on per-token metrics.

Everything here is pure: a function of an `evaluate(rate) -> Trial` callable and of result tables.
simulator.experiments.capacity.trials wires it to the simulator.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from simulator.slo import SLO, slos_from_config, trial_metrics

if TYPE_CHECKING:
    from simulator.metrics.records import RequestTable  # a trial's requests: columns or a DataFrame

class SearchError(ValueError):
    """A search setting is wrong; the message names the field."""


@dataclass
class SearchConfig:
    """Settings of one capacity search: the `search` config group's fields, plus the objectives, which
    the apps take from the `slo` group (`search_config_from`); the default here is for direct use."""

    slos: list[SLO] = field(
        default_factory=lambda: [
            SLO("tbt_s", 99, 0.1),
            SLO("ttft_s", 90, 2.0),
            SLO("queueing_delay_s", 99, 5.0),
        ]
    )
    num_requests: int = 2048  # requests simulated per trial (before trimming)
    warmup_fraction: float = 0.1  # share of requests (by arrival order) left out at the start
    cooldown_fraction: float = 0.1  # share left out at the end, when the queue drains
    # Rejected measured requests tolerated in a passing trial. The simulator rejects only requests that
    # can never fit (prompt + output > max_model_len), whatever the load, so this guards against a
    # workload that does not suit the model rather than against overload; reports always show the share.
    max_rejected_fraction: float = 0.1
    initial_rate_qps: float = 1.0
    min_rate_qps: float = 0.01  # below this the configuration is called infeasible at any rate
    max_rate_qps: float = 1000.0  # above this the search stops and reports the limit
    growth_factor: float = 2.0  # rate multiplier while bracketing
    tolerance: float = 0.02  # stop when (fail - pass) / pass <= tolerance
    max_trials: int = 30
    write_capacity_run: bool = True  # also write the result files of the trial at capacity (for plots)

    def __post_init__(self) -> None:
        self.slos = slos_from_config(self.slos)
        self.validate()

    def validate(self) -> None:
        """Raise SearchError naming the first wrong field."""
        checks = [
            (self.num_requests >= 10, f"search.num_requests={self.num_requests} must be at least 10"),
            (0 <= self.warmup_fraction < 1, f"search.warmup_fraction={self.warmup_fraction} not in [0, 1)"),
            (0 <= self.cooldown_fraction < 1, f"search.cooldown_fraction={self.cooldown_fraction} not in [0, 1)"),
            (
                self.warmup_fraction + self.cooldown_fraction < 0.9,
                "search.warmup_fraction + search.cooldown_fraction must leave at least 10% of requests",
            ),
            (0 <= self.max_rejected_fraction <= 1, "search.max_rejected_fraction must be in [0, 1]"),
            (0 < self.min_rate_qps, f"search.min_rate_qps={self.min_rate_qps} must be positive"),
            (
                self.min_rate_qps <= self.initial_rate_qps <= self.max_rate_qps,
                "search.initial_rate_qps must lie in [search.min_rate_qps, search.max_rate_qps]",
            ),
            (self.growth_factor > 1, f"search.growth_factor={self.growth_factor} must exceed 1"),
            (0 < self.tolerance < 1, f"search.tolerance={self.tolerance} must be in (0, 1)"),
            (self.max_trials >= 2, f"search.max_trials={self.max_trials} must be at least 2"),
            (len(self.slos) > 0, "search.slos is empty: a capacity needs at least one SLO"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(message)


@dataclass
class Trial:
    """One simulated rate: whether the SLOs held, and the measured metrics (seconds)."""

    rate_qps: float
    feasible: bool
    metrics: dict = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    error: str = ""


@dataclass
class CapacityResult:
    """Outcome of a search. `status` is one of:
    converged            pass and fail rates within tolerance; capacity_qps is the highest passing rate
    feasible_at_max_rate the SLOs held at max_rate_qps; capacity_qps is that bound (a lower bound)
    infeasible           the SLOs failed even at min_rate_qps; capacity_qps is 0
    max_trials           stopped by max_trials before reaching the tolerance; capacity_qps is a lower bound
    """

    capacity_qps: float
    status: str
    trials: list[Trial]
    lowest_failing_qps: float | None

    @property
    def capacity_trial(self) -> Trial | None:
        """The trial run at the reported capacity, if any passed."""
        passing = [t for t in self.trials if t.feasible and t.rate_qps == self.capacity_qps]
        return passing[-1] if passing else None


def check_slos(measured: RequestTable, tbt_gaps_s: np.ndarray, search: SearchConfig) -> tuple[dict, list[str]]:
    """Metrics of one trial and the list of violated objectives (empty when the trial passes)."""
    metrics = trial_metrics(measured, tbt_gaps_s, search.slos)
    violations = []
    if metrics["num_measured"] == 0:
        violations.append("no measured requests")
    if metrics["rejected_fraction"] > search.max_rejected_fraction:
        violations.append(
            f"rejected {metrics['rejected_fraction']:.1%} > {search.max_rejected_fraction:.1%} of requests"
        )
    for slo in search.slos:
        value = metrics.get(f"{slo.metric}_p{slo.percentile:g}", float("nan"))
        if not value <= slo.max_s:  # NaN (no values at all, or a missing column) fails too
            violations.append(f"{slo.name} (measured {value:.4g} s)")
    return metrics, violations


# --- the search itself (pure: any `evaluate(rate) -> Trial` will do) -------------------------------


def search_capacity(
    evaluate: Callable[[float], Trial],
    search: SearchConfig,
    on_trial: Callable[[Trial], None] | None = None,
) -> CapacityResult:
    """Find the highest rate whose trial passes, to `search.tolerance`.

    `evaluate(rate_qps)` runs one trial. Trials are assumed monotone in rate (pass below the capacity,
    fail above); the search never re-runs a rate. `on_trial` is called after each trial (progress).
    """
    trials: list[Trial] = []

    def run(rate_qps: float) -> bool:
        start = time.perf_counter()
        trial = evaluate(rate_qps)
        trial.wall_s = trial.wall_s or time.perf_counter() - start
        trials.append(trial)
        if on_trial:
            on_trial(trial)
        return trial.feasible

    rate = search.initial_rate_qps
    highest_pass: float | None = None
    lowest_fail: float | None = None
    if run(rate):
        highest_pass = rate
        while lowest_fail is None:
            if highest_pass >= search.max_rate_qps:
                return CapacityResult(highest_pass, "feasible_at_max_rate", trials, None)
            if len(trials) >= search.max_trials:
                return CapacityResult(highest_pass, "max_trials", trials, None)
            rate = min(highest_pass * search.growth_factor, search.max_rate_qps)
            if run(rate):
                highest_pass = rate
            else:
                lowest_fail = rate
    else:
        lowest_fail = rate
        while highest_pass is None:
            if lowest_fail <= search.min_rate_qps:
                return CapacityResult(0.0, "infeasible", trials, lowest_fail)
            if len(trials) >= search.max_trials:
                return CapacityResult(0.0, "max_trials", trials, lowest_fail)
            rate = max(lowest_fail / search.growth_factor, search.min_rate_qps)
            if run(rate):
                highest_pass = rate
            else:
                lowest_fail = rate

    while (lowest_fail - highest_pass) > search.tolerance * highest_pass:
        if len(trials) >= search.max_trials:
            return CapacityResult(highest_pass, "max_trials", trials, lowest_fail)
        rate = 0.5 * (highest_pass + lowest_fail)
        if run(rate):
            highest_pass = rate
        else:
            lowest_fail = rate
    return CapacityResult(highest_pass, "converged", trials, lowest_fail)


def search_config_from(values: dict | None, slos: Sequence) -> SearchConfig:
    """SearchConfig from the `search` config group's values and the `slo` group's objectives;
    errors name the field."""
    values = dict(values or {})
    known = {f for f in SearchConfig.__dataclass_fields__ if f != "slos"}
    unknown = set(values) - known
    if unknown:
        raise SearchError(f"unknown search field(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return SearchConfig(**values, slos=slos)
