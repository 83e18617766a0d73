"""Host-side costs of a serving engine, as the runtime model applies an engine profile's host terms.

An engine profile (simulator/engine.py, conf/engine/*.yaml) gives the host time of an iteration
(cpu_overhead_ms + cpu_overhead_per_sequence_ms x sequences) and the least GPU time per layer of a batch the
host launches op by op (eager_launch_ms_per_layer) or as piecewise graph pieces with attention between them
(piecewise_launch_ms_per_layer). This module holds how those terms combine with kernel times.

Launch floor: when the GPU work of a batch is shorter than the host needs to enqueue it, the GPU waits
between kernels and the forward pass lasts as long as the launching: a pipeline stage's GPU time is at least
the floor F = per-layer floor x its layers. Near the floor the two overlap imperfectly (the GPU catches up
with the host on short kernels, waits, then falls behind on long ones), so the stage takes the soft maximum
(g^p + F^p)^(1/p) of its kernel time g and F, p = the profile's eager_overlap_exponent: F at g = 0, 1.12 F
at g = F, g within 0.3 % once g > 2 F. Batches replayed from a full CUDA graph have no floor.

Measured on servesim's own engine (servesim-execute, Llama-3-8B on one H100, 24 fidelity runs, 53,205
CUDA-graph decode iterations; data/validation/h100/fidelity/cpu_overhead.json): host time the GPU waits for
per iteration (schedule 0.04 + prepare inputs 0.17 + graph launch 0.11 + apply outputs 0.03 ms at the
median), fitted as 0.350 ms + 0.0015 ms per sequence; a 32-layer forward launched op by op lasts at least
15.631 ms (0.4885 ms per layer; simulator.experiments.compare.measured_eager_floor_s). The exponent
p = 6 minimises the median error of the GPU span of the 2,314 eager iterations of those runs (3.1 %; no
floor: 5.0 %; a hard maximum: 4.5 %). conf/engine/servesim_execute.yaml holds these numbers.

Host time and the GPU: a synchronous engine schedules, prepares and processes outputs while the GPU waits,
so an iteration lasts GPU + host; with async scheduling (vLLM V1's AsyncScheduler, SGLang's overlap
scheduler) the host works on step n + 1 while the GPU runs step n, so an iteration lasts max(GPU, host).
"""
from __future__ import annotations

import dataclasses

from simulator.engine import EngineProfile


def launch_bound_s(kernels_s, floor_s, exponent: float):
    """GPU time of a stage launched from the host: the soft maximum of its kernel time (a float or an
    array) and its launch floor."""
    return (kernels_s ** exponent + floor_s ** exponent) ** (1.0 / exponent)


def with_cpu_overhead(engine: EngineProfile, cpu_overhead_s: float | None) -> EngineProfile:
    """`engine` with its host terms replaced by a constant: None keeps the profile's terms; a number of
    seconds means that much host time per iteration, no launch floors and no overlap (0 = no host terms at
    all: kernel times only)."""
    if cpu_overhead_s is None:
        return engine
    try:
        seconds = float(cpu_overhead_s)
    except (TypeError, ValueError):
        raise ValueError(f"cpu_overhead_s={cpu_overhead_s!r}: expected seconds or null (the engine profile's "
                         f"host terms)") from None
    if not seconds >= 0:
        raise ValueError(f"cpu_overhead_s={cpu_overhead_s!r} must be >= 0")
    return dataclasses.replace(engine, cpu_overhead_ms=seconds * 1e3, cpu_overhead_per_sequence_ms=0.0,
                               eager_launch_ms_per_layer=0.0, piecewise_launch_ms_per_layer=0.0,
                               async_scheduling=False)


def kernels_only(attention_launch: str) -> EngineProfile:
    """An engine with no host terms and no graph padding: what a whole forward replayed from one CUDA graph
    measures (data/validation/.../iterations*.csv time_ms), for calibrating kernel sums."""
    return EngineProfile(name=f"kernels_only_{attention_launch}", attention_launch=attention_launch,
                         cuda_graphs="none")
