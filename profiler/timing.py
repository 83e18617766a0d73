"""How one point is timed: warm-up, then repeated measurements, reported as median with p10/p90.

On a GPU each point is timed as CUDA-graph replays: one graph holds `calls_per_replay` back-to-back
calls, cycling over several input sets so data that fits in L2 is not re-read from L2 (a real forward
pass reads each layer's weights cold). One replay is timed with CUDA events and divided by its call count;
the graph removes the CPU launch gaps between kernels, which a serving engine running CUDA graphs does not
pay either (the runtime model adds CPU overhead separately). On a CPU each call is timed with
perf_counter.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TimingStats:
    """Milliseconds per call: median and 10th/90th percentiles over `repeats` measurements."""

    time_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    used_graph: bool = False
    calls_per_replay: int = 1

    def row(self) -> dict:
        return {"time_ms": self.time_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "repeats": self.repeats}


@dataclass(frozen=True)
class TimingSettings:
    """Knobs of the harness. Defaults are what the committed GPU tables used."""

    warmup_calls: int = 3            # eager calls before anything is timed (module load, handles, autotune)
    repeats: int = 10                # timed replays (GPU) or calls (CPU)
    target_replay_ms: float = 0.3    # a replay should last at least this long so event resolution is moot
    max_calls_per_replay: int = 128
    use_graphs: bool = True
    l2_flush_factor: float = 4.0     # input sets are rotated until they cover this many L2 sizes
    max_input_sets: int = 64


def summarize(samples_ms) -> TimingStats:
    """Median and 10th/90th percentiles (linear interpolation) of per-call times in ms."""
    values = np.asarray(list(samples_ms), dtype=float)
    if values.size == 0:
        raise ValueError("summarize needs at least one sample")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"timing samples must be finite and >= 0, got {values.tolist()}")
    p10, med, p90 = np.percentile(values, [10, 50, 90])
    return TimingStats(float(med), float(p10), float(p90), int(values.size))


def input_sets_needed(footprint_bytes: int, l2_bytes: int, settings: TimingSettings) -> int:
    """How many copies of an op's inputs to rotate so that together they exceed l2_flush_factor x L2."""
    if l2_bytes <= 0 or footprint_bytes <= 0:
        return 1
    need = math.ceil(settings.l2_flush_factor * l2_bytes / footprint_bytes)
    return int(min(max(1, need), settings.max_input_sets))


def time_call(call: Callable[[int], object], num_sets: int, device: torch.device,
              settings: TimingSettings = TimingSettings()) -> TimingStats:
    """Time `call(i)` (one call on input set i, 0 <= i < num_sets) on `device`."""
    if device.type == "cuda":
        return _time_cuda(call, num_sets, settings)
    return _time_cpu(call, num_sets, settings)


def _time_cpu(call, num_sets, settings) -> TimingStats:
    for i in range(settings.warmup_calls):
        call(i % num_sets)
    samples = []
    for r in range(settings.repeats):
        start = time.perf_counter()
        call(r % num_sets)
        samples.append((time.perf_counter() - start) * 1e3)
    return summarize(samples)


def _time_cuda(call, num_sets, settings) -> TimingStats:
    for i in range(settings.warmup_calls):
        call(i % num_sets)
    torch.cuda.synchronize()
    # Estimate one call from a few eager calls (includes launch gaps, so it over-estimates small ops,
    # which only makes the graph shorter than planned).
    probes = max(2, min(num_sets, 8))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(probes):
        call(i % num_sets)
    end.record()
    end.synchronize()
    estimate_ms = max(start.elapsed_time(end) / probes, 1e-4)
    calls = math.ceil(settings.target_replay_ms / estimate_ms)
    calls = max(calls, min(num_sets, settings.max_calls_per_replay))
    calls = int(min(max(1, calls), settings.max_calls_per_replay))

    def run_all():
        for i in range(calls):
            call(i % num_sets)

    graph = None
    if settings.use_graphs:
        graph = _capture(run_all)
    runner = graph.replay if graph is not None else run_all
    runner()  # warm the graph (first replay uploads it)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(settings.repeats)]
    for s, e in events:
        s.record()
        runner()
        e.record()
    torch.cuda.synchronize()
    stats = summarize(s.elapsed_time(e) / calls for s, e in events)
    return TimingStats(stats.time_ms, stats.p10_ms, stats.p90_ms, stats.repeats,
                       used_graph=graph is not None, calls_per_replay=calls)


def _capture(fn) -> torch.cuda.CUDAGraph | None:
    """Capture `fn` into a CUDA graph; None if the ops in it cannot be captured (timed eagerly then)."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            fn()  # warm-up on the capture stream, as torch's graph docs ask
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    return graph
