"""Service-level objectives: what they are, how they are read from configuration (the `slo` config
group, SLOConfig, parsed into SLO objects once, when it is built), and how one run's tables are judged
against them. A single run (its summary's verdicts), the capacity search (does a trial
pass) and the goodput search all use this module; it imports nothing above the config and metrics types.

An SLO says the `percentile` of a latency `metric` must be at most `max_s` seconds. "tbt_s" is taken over
every inter-token gap of the measured requests; the other metrics are per-request columns of the
simulator's requests table. Rejected requests are left out of latencies; a request that never completed
counts as infinitely late.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from simulator.config import ConfigError

if TYPE_CHECKING:
    from simulator.metrics.records import RequestTable  # a trial's requests: columns or a DataFrame

# Per-request latency columns of the simulator's requests table that an SLO can bound, plus "tbt_s",
# which is taken over every inter-token gap of the measured requests (not a per-request statistic).
REQUEST_METRICS = ("ttft_s", "e2e_s", "normalized_e2e_s_per_token", "queueing_delay_s", "tpot_s")
SLO_METRICS = ("tbt_s",) + REQUEST_METRICS
REPORTED_PERCENTILES = (50, 90, 99)

class SLOError(ConfigError):
    """An SLO is wrong; the message names the entry and the field."""


@dataclass(frozen=True)
class SLO:
    """One service-level objective: the `percentile` of `metric` must be at most `max_s` seconds
    (seconds per output token for normalized_e2e_s_per_token)."""

    metric: str = "tbt_s"
    percentile: float = 99.0
    max_s: float = 0.1

    def __post_init__(self) -> None:
        if self.metric not in SLO_METRICS:
            raise SLOError(f"slo.metric='{self.metric}' is not one of {', '.join(SLO_METRICS)}")
        if not 0 < self.percentile <= 100:
            raise SLOError(f"slo.percentile={self.percentile} for {self.metric} must be in (0, 100]")
        if not self.max_s > 0:
            raise SLOError(f"slo.max_s={self.max_s} for {self.metric} must be positive")

    @property
    def name(self) -> str:
        """Short label such as 'p99_tbt_s<=0.1'."""
        return f"p{self.percentile:g}_{self.metric}<={self.max_s:g}"


def measured_requests(requests: RequestTable, warmup_fraction: float, cooldown_fraction: float) -> RequestTable:
    """Requests left after dropping the first `warmup_fraction` and last `cooldown_fraction` by arrival
    order (ties by request_id), in that order. Warm-up requests see an empty system; cool-down requests
    see it draining. A DataFrame gives a DataFrame (its rows, index kept), columns give columns."""
    # lexsort is stable and sorts by its last key first: arrival, then request_id.
    ordered = np.lexsort((np.asarray(requests["request_id"]), np.asarray(requests["arrived_s"])))
    n = len(ordered)
    kept = ordered[math.floor(n * warmup_fraction): n - math.floor(n * cooldown_fraction)]
    if isinstance(requests, Mapping):
        return {name: np.asarray(column)[kept] for name, column in requests.items()}
    return requests.iloc[kept]


def percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolated percentile that treats +inf (an unfinished request) as larger than any
    latency: the result is inf when the percentile falls among infinite values. NaN for no values."""
    return percentiles(values, [q])[0]


def percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """`percentile` at each of `qs`, from one copy and one partial sort of the values (the TBT gaps are
    one per output token: millions). `values` may also be an object with its own `percentiles(qs)` that
    follows these rules (metrics.StreamedGaps: gaps too many to hold at once)."""
    if hasattr(values, "percentiles"):
        return values.percentiles(qs)
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return [float("nan")] * len(qs)
    finite_cap = 1e300  # stands in for inf so np.percentile never computes inf - inf
    capped = np.minimum(values, finite_cap)  # our own copy: percentile may partition it in place
    results = np.percentile(capped, list(qs), overwrite_input=True).tolist()
    return [float("inf") if result >= finite_cap / 2 else result for result in results]


def _metric_values(measured: RequestTable, tbt_gaps_s: np.ndarray) -> tuple[dict, dict]:
    """Counts of one trial and, per SLO metric, the array of values (inf for unfinished requests)."""
    completed_s = np.asarray(measured["completed_s"], dtype=float)
    num_measured = len(completed_s)
    if "rejected" in measured:
        rejected = np.asarray(measured["rejected"], dtype=bool)
    else:
        rejected = np.zeros(num_measured, dtype=bool)
    served = ~rejected
    unfinished = int(np.isnan(completed_s[served]).sum())
    counts = {
        "num_measured": num_measured,
        "rejected_fraction": float(rejected.mean()) if num_measured else 0.0,
        "unfinished": unfinished,
    }
    # An unfinished request's missing tokens are gaps of unbounded length.
    if hasattr(tbt_gaps_s, "with_unbounded"):  # metrics.StreamedGaps: read in chunks, never copied
        gaps = tbt_gaps_s.with_unbounded(unfinished)
    else:
        gaps = np.asarray(tbt_gaps_s, dtype=float)
        if unfinished:  # (no copy of the token-sized array otherwise)
            gaps = np.append(gaps, np.full(unfinished, np.inf))
    values = {"tbt_s": gaps}
    for name in REQUEST_METRICS:
        if name in measured:
            column = np.asarray(measured[name], dtype=float)[served]
            values[name] = np.where(np.isnan(column), np.inf, column)
    return counts, values


def trial_metrics(measured: RequestTable, tbt_gaps_s: np.ndarray, slos: Sequence[SLO] = ()) -> dict:
    """Percentiles of every SLO metric over the measured requests, as flat keys like 'ttft_s_p99'
    (P50, P90, P99, plus any percentile an SLO in `slos` asks for).

    `measured` is the requests table after trimming (columns or a DataFrame); `tbt_gaps_s` holds every
    inter-token gap (seconds) of those same requests. Rejected requests are left out of latencies and
    counted in 'rejected_fraction'; a request that never completed counts as infinitely late.
    """
    metrics, values = _metric_values(measured, tbt_gaps_s)
    wanted = {(name, float(q)) for name in values for q in REPORTED_PERCENTILES}
    wanted |= {(s.metric, float(s.percentile)) for s in slos if s.metric in values}
    for name in sorted({name for name, _ in wanted}):
        qs = sorted(q for metric, q in wanted if metric == name)
        for q, value in zip(qs, percentiles(values[name], qs)):
            metrics[f"{name}_p{q:g}"] = value
    return metrics


def slos_from_config(entries: Iterable) -> list[SLO]:
    """SLO objects from the `slo` group's list of mappings ({metric, percentile, max_s}); SLOError
    naming the entry (slo.slos[i]) and what is wrong with it. SLOs given pass through unchanged."""
    slos = []
    for i, entry in enumerate(entries):
        try:
            slos.append(entry if isinstance(entry, SLO) else SLO(**dict(entry)))
        except (TypeError, ValueError) as e:  # a missing or unknown key, a value of the wrong type or range
            raise SLOError(f"slo.slos[{i}]: {e}") from None
    return slos


def default_slos() -> list[SLO]:
    """The `relaxed` set (conf/slo/relaxed.yaml): what a run is judged against when no slo group is set."""
    return [SLO("tbt_s", 99.0, 0.5), SLO("ttft_s", 90.0, 2.0), SLO("queueing_delay_s", 99.0, 5.0)]


@dataclass
class SLOConfig:
    """The `slo` config group: latency objectives a run is judged against, each saying the `percentile` of
    `metric` must be at most `max_s` (metrics: SLO_METRICS).

    `slos` holds SLO objects. Entries given as mappings (as conf/slo/*.yaml and Hydra overrides write them)
    are parsed here, when the group is built, so a resolved configuration carries typed objectives and
    no run parses them again; SLOError names slo.slos[i] for a wrong entry.
    """

    name: str = "relaxed"
    slos: list[SLO] = field(default_factory=default_slos)

    def __post_init__(self) -> None:
        self.slos = slos_from_config(self.slos)


def slo_table(slos: Sequence[SLO]) -> list[dict]:
    """SLOs as plain records (for capacity.json)."""
    return [asdict(s) | {"name": s.name} for s in slos]


def evaluate_slos(slo: SLOConfig, request_table: RequestTable,
                  tbt_gaps_s: np.ndarray) -> dict:
    """Each objective's measured percentile and whether it holds, over all non-rejected requests.

    `request_table` is metrics.request_latencies' columns or a request_table DataFrame."""
    measured = trial_metrics(request_table, tbt_gaps_s, slo.slos)
    results = []
    for objective in slo.slos:
        value = measured.get(f"{objective.metric}_p{objective.percentile:g}", float("nan"))
        results.append({"name": objective.name, "measured_s": _json_float(value),
                        "met": bool(value <= objective.max_s)})
    return {"name": slo.name, "all_met": all(r["met"] for r in results), "objectives": results}


def _json_float(x: float) -> float | None:
    return float(f"{x:.7g}") if np.isfinite(x) else None
