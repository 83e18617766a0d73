"""Per-iteration CPU overhead of a serving engine: scheduling, input preparation, output processing.

The GPU work of sampling is measured by the profiler (op `sampling`) and counted under
lm_head_sampling; this term is only the host-side time during which the GPU waits.

Default numbers (DEFAULT_CPU_OVERHEAD) are a least-squares line through Vidur's published vLLM
measurements on one A100 with Llama-2-7B at TP1 (microsoft/vidur, data/profiling/a100/cpu_overheads.csv,
medians of SCHEDULE + PREPARE_INPUTS_E2E + PROCESS_MODEL_OUTPUTS at batch sizes 8..64):

    batch size      8     16     24     32     40     48     56     64
    overhead ms  1.08   1.85   2.55   3.50   4.06   4.89   5.49   6.22

    fit: 0.40 ms + 0.092 ms per sequence (max residual 0.16 ms)

That vLLM (v0 engine, 2023-24) detokenised and built input tensors in Python on the critical path; the
vLLM maintainers report the same order of magnitude ("when BS is 200, all this together can be 20ms",
vllm-project/vllm#6801; 5-13 ms GPU bubbles per decode step, #6854). Newer engines (vLLM V1 with async
scheduling, SGLang) hide much of it, so pass cpu_overhead_s=0 to model a fully overlapped engine, or a
constant. servesim's fidelity work will replace these numbers with measurements of its own.
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


DEFAULT_CPU_OVERHEAD = CpuOverhead(fixed_s=0.40e-3, per_sequence_s=0.092e-3)


def cpu_overhead(cpu_overhead_s: float | None) -> CpuOverhead:
    """None -> DEFAULT_CPU_OVERHEAD; a number -> that many seconds per iteration (0 = none)."""
    if cpu_overhead_s is None:
        return DEFAULT_CPU_OVERHEAD
    return CpuOverhead(fixed_s=float(cpu_overhead_s))
