"""Small builders shared by the simulator tests: hand-computable predictors and one-call simulations."""
from __future__ import annotations

import functools

import numpy as np

from policies import POLICIES
from simulator.cluster import SimulationOutput, simulate
from simulator.linear_predictor import LinearPredictor
from simulator.request import RequestState


def linear(fixed_ms=10.0, prefill_ms=1.0, decode_ms=2.0, kv_ms=0.0, stages=1) -> LinearPredictor:
    """Each stage: fixed + prefill x prefill tokens + decode x decoding sequences + kv x KV tokens (ms)."""
    return LinearPredictor(fixed_ms / 1e3, prefill_ms / 1e3, decode_ms / 1e3, kv_ms / 1e3, stages)


def run(policy, arrivals_s, prompts, outputs, *, predictor=None, kv_blocks=10_000, block_size=16,
        kv_watermark=0.0, max_model_len=100_000, content=None, **kwargs) -> SimulationOutput:
    """Simulate requests with `policy` (a name, or (name, params)) and return the simulation's output.
    `content` (a TokenContent) says which requests share prefixes."""
    name, params = (policy, {}) if isinstance(policy, str) else policy
    requests = RequestState.create(np.asarray(arrivals_s, float), prompts, outputs, max_model_len, content)
    return simulate(requests, functools.partial(POLICIES[name], **params), predictor or linear(),
                    kv_blocks, block_size=block_size, kv_watermark=kv_watermark, **kwargs)


def token_times_ms(out: SimulationOutput, request_id: int) -> list[float]:
    """Emission times (ms, rounded to 1 ns) of one request's tokens."""
    r = out.records
    times = r.token_times_s[r.token_offsets[request_id]: r.token_offsets[request_id + 1]]
    return [round(t * 1e3, 6) for t in times]


def random_workload(n: int, seed: int, rate_qps: float = 20.0, max_prompt: int = 600, max_output: int = 120):
    """Poisson arrivals with uniform lengths: (arrivals_s, prompts, outputs)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate_qps, n))
    return arrivals, rng.integers(1, max_prompt, n), rng.integers(1, max_output, n)
