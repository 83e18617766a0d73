"""Where requests come from: trace readers and synthetic generators.

`load_workload(cfg, seed)` turns a `WorkloadConfig` into a `Workload`: three aligned arrays of
arrival times and prompt/output lengths, sorted by arrival. It knows nothing about the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class WorkloadConfig:
    """The `workload` config group (conf/workload/*.yaml). See docs/workload_and_metrics.md."""

    name: str = ""
    trace: str | None = "data/traces/splitwise_conv.csv"
    trace_format: str = "auto"  # auto | vidur | azure
    num_requests: int | None = None  # None: the whole trace; else the first N
    arrival: str = "trace"  # trace | poisson | gamma | fixed
    rate_scale: float = 1.0  # arrival=trace: 2.0 replays the trace twice as fast
    rate_qps: float = 1.0  # synthetic arrivals: mean requests per second
    interarrival_cv: float = 1.0  # arrival=gamma: std/mean of the gaps (1 = Poisson, >1 burstier)
    lengths: str = "trace"  # trace | uniform | zipf
    min_tokens: int = 64  # synthetic lengths: prompt + output tokens, lower bound
    max_tokens: int = 4096  # synthetic lengths: prompt + output tokens, upper bound
    prefill_decode_ratio: float = 4.0  # synthetic lengths: prompt_tokens / output_tokens
    zipf_theta: float = 0.6  # lengths=zipf: P(k-th smallest length) ~ 1 / k**theta
    max_prompt_tokens: int | None = None  # clip longer prompts to this (None: no clipping)
    max_output_tokens: int | None = None  # clip longer outputs to this (None: no clipping)


@dataclass
class Workload:
    """Requests to simulate, sorted by arrival; arrays are aligned (row i is request i)."""

    name: str
    arrived_s: np.ndarray  # float64, seconds from the start of the run
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1

    def __len__(self) -> int:
        return len(self.arrived_s)
