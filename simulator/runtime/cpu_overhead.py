"""Host-side costs of a serving engine: per-iteration CPU overhead and the eager-launch floor.

CPU overhead: scheduling, input preparation, output processing, added to every iteration.

Eager-launch floor: an engine that replays CUDA graphs only for decode-only batches (vLLM v0, servesim's own
executor) launches every other batch op by op from Python. When the GPU work of such a batch is shorter
than the host needs to enqueue it, the GPU waits between kernels and the forward pass lasts as long as the
launching: a pipeline stage's GPU time is at least the floor F = `eager_floor_s_per_layer` x its layers.
Near the floor the two overlap imperfectly (the GPU catches up with the host on short kernels, waits, then
falls behind on long ones), so the stage takes the soft maximum (g^p + F^p)^(1/p) of its kernel time g and
F, with p = `eager_overlap_exponent`: F at g = 0, 1.12 F at g = F, g within 0.3 % once g > 2 F. Decode-only
batches of up to `graph_max_batch` sequences are replayed from a graph and have neither.

The GPU work of sampling is measured by the profiler (op `sampling`) and counted under
lm_head_sampling; this term is only the host-side time during which the GPU waits.

Default (DEFAULT_CPU_OVERHEAD): measured on servesim's own engine (servesim-execute, Llama-3-8B on one
H100, 24 fidelity runs, 53,205 CUDA-graph decode iterations; data/validation/h100/fidelity/cpu_overhead.json):
host time the GPU waits for per iteration (schedule 0.04 + prepare inputs 0.17 + graph launch 0.11 +
apply outputs 0.03 ms at the median), fitted as 0.350 ms + 0.0015 ms per sequence. With it the simulator
meets the per-iteration fidelity target in 24 of 24 measured runs (docs/fidelity.md). Its eager-launch
floor, from the same runs: 15.631 ms of GPU span for a 32-layer forward pass whose kernels take less than
the host's median launch time (14.5 ms), i.e. 0.4885 ms per layer (simulator.compare.measured_eager_floor_s;
which iterations count as launch-bound depends on the runtime model's kernel times: with the dense-ladder
profiles it reads 15.665 ms, cpu_overhead.json's "eager_floor_ms", 0.2 % more, left as it was). The
exponent p = 6 minimises the median error of the GPU span of the 2,314 eager iterations of those runs
(3.1 %, mean -1.6 %; no floor: 5.0 %, mean -10.0 %; a hard maximum, p = infinity: 4.5 %, mean -4.4 %;
p = 4 / 8: 4.8 / 3.4 %; runtime model of the dense-ladder H100 profiles). CUDA graphs are captured up to
256 sequences, as vLLM does.

VLLM_V0_CPU_OVERHEAD: a least-squares line through Vidur's published vLLM measurements on one A100 with
Llama-2-7B at TP1 (microsoft/vidur, data/profiling/a100/cpu_overheads.csv, medians of SCHEDULE +
PREPARE_INPUTS_E2E + PROCESS_MODEL_OUTPUTS at batch sizes 8..64):

    batch size      8     16     24     32     40     48     56     64
    overhead ms  1.08   1.85   2.55   3.50   4.06   4.89   5.49   6.22

    fit: 0.40 ms + 0.092 ms per sequence (max residual 0.16 ms)

That vLLM (v0 engine, 2023-24) detokenised and built input tensors in Python on the critical path; the
vLLM maintainers report the same order of magnitude ("when BS is 200, all this together can be 20ms",
vllm-project/vllm#6801; 5-13 ms GPU bubbles per decode step, #6854). To model such an engine from Python pass
cpu_overhead_s="vllm_v0" (no floor: Vidur did not measure one); to model a fully overlapped engine that
also captures prefills in graphs (vLLM V1 with async scheduling and piecewise CUDA graphs), 0. A number
means that many seconds per iteration and no floor.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuOverhead:
    """Host time added to every iteration: fixed_s + per_sequence_s * sequences in the batch; and the
    least GPU time per layer of a batch launched op by op (eager_floor_s_per_layer; 0 = no floor)."""

    fixed_s: float
    per_sequence_s: float = 0.0
    eager_floor_s_per_layer: float = 0.0
    eager_overlap_exponent: float = 6.0  # p of the soft maximum (g^p + F^p)^(1/p)
    graph_max_batch: int = 256  # largest decode-only batch replayed from a CUDA graph

    def __post_init__(self):
        if min(self.fixed_s, self.per_sequence_s, self.eager_floor_s_per_layer) < 0:
            raise ValueError(f"CPU overhead must be >= 0, got fixed_s={self.fixed_s}, "
                             f"per_sequence_s={self.per_sequence_s}, "
                             f"eager_floor_s_per_layer={self.eager_floor_s_per_layer}")
        if not self.eager_overlap_exponent >= 1:
            raise ValueError(f"eager_overlap_exponent must be >= 1, got {self.eager_overlap_exponent}")

    def launched_eagerly(self, num_tokens: int, num_sequences: int) -> bool:
        """Whether a batch runs op by op: it has prefill tokens, or more decodes than any captured graph."""
        return num_tokens > num_sequences or num_sequences > self.graph_max_batch

    def eager_gpu_s(self, kernels_s, floor_s: float):
        """GPU time of a stage launched op by op: the soft maximum of its kernel time (a float or an array)
        and its launch floor."""
        p = self.eager_overlap_exponent
        return (kernels_s ** p + floor_s ** p) ** (1.0 / p)

    def seconds(self, num_sequences: int) -> float:
        return self.fixed_s + self.per_sequence_s * num_sequences


MEASURED_EAGER_FLOOR_S = 15.631e-3  # 32-layer forward (Llama-3-8B, H100), cpu_overhead.json
DEFAULT_CPU_OVERHEAD = CpuOverhead(fixed_s=0.350e-3, per_sequence_s=0.0015e-3,
                                   eager_floor_s_per_layer=MEASURED_EAGER_FLOOR_S / 32)
VLLM_V0_CPU_OVERHEAD = CpuOverhead(fixed_s=0.40e-3, per_sequence_s=0.092e-3)
NAMED_CPU_OVERHEADS = {"servesim": DEFAULT_CPU_OVERHEAD, "vllm_v0": VLLM_V0_CPU_OVERHEAD}


def cpu_overhead(cpu_overhead_s: float | str | CpuOverhead | None) -> CpuOverhead:
    """None -> DEFAULT_CPU_OVERHEAD; a name in NAMED_CPU_OVERHEADS; a number -> that many seconds per
    iteration and no eager-launch floor (0 = no host terms at all); a CpuOverhead as it is."""
    if cpu_overhead_s is None:
        return DEFAULT_CPU_OVERHEAD
    if isinstance(cpu_overhead_s, CpuOverhead):
        return cpu_overhead_s
    if isinstance(cpu_overhead_s, str) and cpu_overhead_s in NAMED_CPU_OVERHEADS:
        return NAMED_CPU_OVERHEADS[cpu_overhead_s]
    try:
        return CpuOverhead(fixed_s=float(cpu_overhead_s))
    except ValueError:
        raise ValueError(f"cpu_overhead_s={cpu_overhead_s!r}: expected seconds or one of "
                         f"{sorted(NAMED_CPU_OVERHEADS)}") from None
