"""Per-iteration CPU overhead of a serving engine: scheduling, input preparation, output processing.

The GPU work of sampling is measured by the profiler (op `sampling`) and counted under
lm_head_sampling; this term is only the host-side time during which the GPU waits.

Default (DEFAULT_CPU_OVERHEAD): measured on servesim's own engine (servesim-execute, Llama-3-8B on one
H100, 24 fidelity runs, 53,205 CUDA-graph decode iterations; data/validation/h100/fidelity/cpu_overhead.json):
host time the GPU waits for per iteration (schedule 0.04 + prepare inputs 0.17 + graph launch 0.11 +
apply outputs 0.03 ms at the median), fitted as 0.350 ms + 0.0015 ms per sequence. With it the simulator
meets the per-iteration fidelity target in 24 of 24 measured runs (docs/fidelity.md).

VLLM_V0_CPU_OVERHEAD: a least-squares line through Vidur's published vLLM measurements on one A100 with
Llama-2-7B at TP1 (microsoft/vidur, data/profiling/a100/cpu_overheads.csv, medians of SCHEDULE +
PREPARE_INPUTS_E2E + PROCESS_MODEL_OUTPUTS at batch sizes 8..64):

    batch size      8     16     24     32     40     48     56     64
    overhead ms  1.08   1.85   2.55   3.50   4.06   4.89   5.49   6.22

    fit: 0.40 ms + 0.092 ms per sequence (max residual 0.16 ms)

That vLLM (v0 engine, 2023-24) detokenised and built input tensors in Python on the critical path; the
vLLM maintainers report the same order of magnitude ("when BS is 200, all this together can be 20ms",
vllm-project/vllm#6801; 5-13 ms GPU bubbles per decode step, #6854). To model such an engine from Python pass
cpu_overhead_s="vllm_v0"; to model a fully overlapped engine (vLLM V1 async scheduling), 0.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuOverhead:
    """Host time added to every iteration: fixed_s + per_sequence_s * sequences in the batch."""

    fixed_s: float
    per_sequence_s: float = 0.0

    def __post_init__(self):
        if self.fixed_s < 0 or self.per_sequence_s < 0:
            raise ValueError(f"CPU overhead must be >= 0, got fixed_s={self.fixed_s}, "
                             f"per_sequence_s={self.per_sequence_s}")

    def seconds(self, num_sequences: int) -> float:
        return self.fixed_s + self.per_sequence_s * num_sequences


DEFAULT_CPU_OVERHEAD = CpuOverhead(fixed_s=0.350e-3, per_sequence_s=0.0015e-3)
VLLM_V0_CPU_OVERHEAD = CpuOverhead(fixed_s=0.40e-3, per_sequence_s=0.092e-3)
NAMED_CPU_OVERHEADS = {"servesim": DEFAULT_CPU_OVERHEAD, "vllm_v0": VLLM_V0_CPU_OVERHEAD}


def cpu_overhead(cpu_overhead_s: float | str | None) -> CpuOverhead:
    """None -> DEFAULT_CPU_OVERHEAD; a name in NAMED_CPU_OVERHEADS; a number -> that many seconds per
    iteration (0 = none)."""
    if cpu_overhead_s is None:
        return DEFAULT_CPU_OVERHEAD
    if isinstance(cpu_overhead_s, str) and cpu_overhead_s in NAMED_CPU_OVERHEADS:
        return NAMED_CPU_OVERHEADS[cpu_overhead_s]
    try:
        return CpuOverhead(fixed_s=float(cpu_overhead_s))
    except ValueError:
        raise ValueError(f"cpu_overhead_s={cpu_overhead_s!r}: expected seconds or one of "
                         f"{sorted(NAMED_CPU_OVERHEADS)}") from None
