"""Synthetic request generators: arrival processes and request lengths, drawn independently.

    arrival = poisson | gamma | fixed      lengths = uniform | zipf

(The multi-turn session generator, where lengths, arrivals and shared prefixes depend on each other, is
simulator/multiturn.py.)
"""
from __future__ import annotations

import numpy as np

from simulator.config import ConfigError

ARRIVALS = ("trace", "poisson", "gamma", "fixed")
LENGTHS = ("trace", "uniform", "zipf", "multiturn")


def synthetic_arrivals_s(
    process: str, n: int, rate_qps: float, interarrival_cv: float, rng: np.random.Generator
) -> np.ndarray:
    """`n` arrival times (s), the first at 0, with gaps of mean 1 / rate_qps.

    poisson: exponential gaps; gamma: gamma gaps with std/mean = interarrival_cv; fixed: equal gaps.
    """
    mean_gap_s = 1.0 / rate_qps
    if process == "poisson":
        gaps = rng.exponential(mean_gap_s, n - 1)
    elif process == "gamma":
        shape = 1.0 / interarrival_cv**2
        gaps = rng.gamma(shape, mean_gap_s / shape, n - 1)
    elif process == "fixed":
        return np.arange(n, dtype=np.float64) * mean_gap_s
    else:
        raise ConfigError(f"workload.arrival: unknown '{process}'; expected one of {ARRIVALS}")
    arrived = np.empty(n, dtype=np.float64)
    arrived[0] = 0.0
    np.cumsum(gaps, out=arrived[1:])
    return arrived


def synthetic_lengths(
    distribution: str,
    n: int,
    min_tokens: int,
    max_tokens: int,
    prefill_decode_ratio: float,
    zipf_theta: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, output_tokens), each int64 of length n, with prompt + output in
    [min_tokens, max_tokens] and both >= 1.

    uniform: every total equally likely. zipf: the k-th smallest total has probability
    proportional to 1 / k**zipf_theta (bounded Zipf). The total is split as
    output = round(total / (1 + prefill_decode_ratio)).
    """
    if distribution == "uniform":
        total = rng.integers(min_tokens, max_tokens + 1, n, dtype=np.int64)
    elif distribution == "zipf":
        ranks = np.arange(1, max_tokens - min_tokens + 2, dtype=np.float64)
        cdf = np.cumsum(ranks**-zipf_theta)
        cdf /= cdf[-1]
        # Inverse-CDF sampling: O(n log k) and no per-sample Python work.
        total = min_tokens + np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)
        np.minimum(total, max_tokens, out=total)  # guards the rounding of cdf[-1] to 1.0
    else:
        raise ConfigError(f"workload.lengths: unknown '{distribution}'; expected one of {LENGTHS}")
    output = np.rint(total / (1.0 + prefill_decode_ratio)).astype(np.int64)
    np.clip(output, 1, total - 1, out=output)
    return total - output, output


def shuffled_rows(num_rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n row indices: a fresh random permutation of all rows for every pass over the trace."""
    passes = -(-n // num_rows)
    return np.concatenate([rng.permutation(num_rows) for _ in range(passes)])[:n]
