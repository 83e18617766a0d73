"""Engine profiles: how a serving engine turns a scheduled batch into GPU work.

Two engines running the same batch on the same GPU can take very different times: one launches a mixed
batch's attention as one FlashAttention-2 varlen kernel (where grouped-query heads are not packed, so
decodes riding with a prefill chunk re-read their KV once per query head), another splits it into a
prefill launch and a decode launch; one replays CUDA graphs only for decode batches and launches the
rest op by op from Python, another captures piecewise graphs for every batch up to a token limit; one
prepares the next step while the GPU runs this one, another waits. An `EngineProfile` names those
choices; conf/engine/*.yaml holds one per engine, with the version and behaviour it follows.

The runtime model (simulator/runtime/predictor.py) prices every iteration through a profile, and
servesim-execute (simulator/execute/) launches batches the way a profile says, so both sides of a
fidelity comparison run the same engine.
"""
from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, fields

from simulator.config import ConfigError, _load_yaml, from_dict

ATTENTION_LAUNCHES = ("fused_varlen", "split", "packed_gqa")
CUDA_GRAPH_MODES = ("none", "decode_only", "piecewise")


@dataclass(frozen=True)
class EngineProfile:
    """How an engine launches one iteration, and what its host costs.

    attention_launch   fused_varlen: one FlashAttention-2 varlen launch per layer over every sequence;
                       split: one launch for the prefill chunks and one for the decodes (each costed as
                       measured alone) plus `split_launch_gap_us`; packed_gqa: one varlen launch whose
                       kernel packs grouped-query heads (needs attention_packed_gqa.csv in the profile)
    cuda_graphs        none: every batch op by op; decode_only: decode-only batches of up to
                       `graph_max_decode_batch` sequences replay a full graph, others op by op;
                       piecewise: those decode graphs, and every other batch of up to
                       `graph_max_tokens` tokens replays graph pieces (the layers' token-wise work) with
                       attention launched between them
    Graph-replayed batches are padded to the next capture size (vllm_capture_sizes), so their token-wise
    work is priced at the padded token count.

    Host terms (milliseconds): cpu_overhead_ms + cpu_overhead_per_sequence_ms x sequences of host time per
    iteration (scheduling, input preparation, output processing); with `async_scheduling` that time
    overlaps the GPU's work on the previous step, so an iteration lasts max(GPU, host) instead of their
    sum. A batch launched op by op takes at least `eager_launch_ms_per_layer` per layer, a piecewise one
    at least `piecewise_launch_ms_per_layer` (the host cannot enqueue kernels faster: see
    simulator/runtime/cpu_overhead.py for the soft maximum and its exponent).
    """

    name: str
    follows: str = ""
    attention_launch: str = "fused_varlen"
    split_launch_gap_us: float = 0.0
    cuda_graphs: str = "decode_only"
    graph_max_decode_batch: int = 256
    graph_max_tokens: int = 512
    cpu_overhead_ms: float = 0.0
    cpu_overhead_per_sequence_ms: float = 0.0
    eager_launch_ms_per_layer: float = 0.0
    piecewise_launch_ms_per_layer: float = 0.0
    eager_overlap_exponent: float = 6.0
    async_scheduling: bool = False
    source: str = ""  # the file it was read from (set by load_engine_profile)

    def __post_init__(self):
        where = self.source or f"engine profile {self.name!r}"
        if self.attention_launch not in ATTENTION_LAUNCHES:
            raise ConfigError(f"{where}: attention_launch={self.attention_launch!r} is not one of "
                              f"{', '.join(ATTENTION_LAUNCHES)}")
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise ConfigError(f"{where}: cuda_graphs={self.cuda_graphs!r} is not one of {', '.join(CUDA_GRAPH_MODES)}")
        for name in ("split_launch_gap_us", "cpu_overhead_ms", "cpu_overhead_per_sequence_ms",
                     "eager_launch_ms_per_layer", "piecewise_launch_ms_per_layer"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"{where}: {name}={value!r} must be a number >= 0")
        for name in ("graph_max_decode_batch", "graph_max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: {name}={value!r} must be an integer >= 0")
        if not (isinstance(self.eager_overlap_exponent, (int, float)) and self.eager_overlap_exponent >= 1):
            raise ConfigError(f"{where}: eager_overlap_exponent={self.eager_overlap_exponent!r} must be >= 1")
        if not isinstance(self.async_scheduling, bool):
            raise ConfigError(f"{where}: async_scheduling={self.async_scheduling!r} must be true or false")

    # ------------------------------------------------------------------ how a batch is launched

    def launch_path(self, num_tokens: int, num_sequences: int) -> str:
        """"graph" (a full CUDA graph), "piecewise" or "eager" for a batch of that many tokens and sequences."""
        if self.cuda_graphs != "none" and num_tokens == num_sequences <= self.graph_max_decode_batch:
            return "graph"
        if self.cuda_graphs == "piecewise" and num_tokens <= self.graph_max_tokens:
            return "piecewise"
        return "eager"

    def padded_tokens(self, num_tokens: int, num_sequences: int) -> int:
        """Tokens the GPU's token-wise kernels process: graph-replayed batches run at their capture size."""
        path = self.launch_path(num_tokens, num_sequences)
        if path == "eager":
            return num_tokens
        limit = self.graph_max_decode_batch if path == "graph" else self.graph_max_tokens
        return padded_capture_size(num_tokens, max(limit, self.graph_max_tokens))

    def launch_floor_ms_per_layer(self, path: str) -> float:
        """Least GPU time per layer of a batch on `path` (the host's launch rate); 0 for a full graph."""
        return {"eager": self.eager_launch_ms_per_layer, "piecewise": self.piecewise_launch_ms_per_layer}.get(path, 0.0)

    def describe(self) -> dict:
        """The profile's fields (JSON-ready) for run summaries and servesim-predict."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}


@functools.lru_cache(maxsize=8)
def vllm_capture_sizes(max_size: int) -> tuple[int, ...]:
    """CUDA-graph capture sizes as vLLM chooses them: 1, 2, 4, then multiples of 8 below 256, then
    multiples of 16 up to `max_size` (vLLM V1 caps it at min(2 x max_num_seqs, 512)). servesim-execute
    captures its decode graphs at the same sizes."""
    sizes = [s for s in (1, 2, 4) if s <= max_size]
    sizes += list(range(8, min(256, max_size + 1), 8)) + list(range(256, max_size + 1, 16))
    return tuple(sizes)


def padded_capture_size(n: int, max_size: int) -> int:
    """The smallest capture size >= n (n itself past the largest: such a batch is not graph-replayed)."""
    sizes = vllm_capture_sizes(max_size)
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else n


def load_engine_profile(name_or_profile) -> EngineProfile:
    """conf/engine/<name>.yaml as an EngineProfile (an EngineProfile is returned as it is)."""
    if isinstance(name_or_profile, EngineProfile):
        return name_or_profile
    if isinstance(name_or_profile, dict):
        values = dict(name_or_profile)
        return from_dict(EngineProfile, values, f"engine {values.get('name', '')!r}")
    path, values = _load_yaml("engine", str(name_or_profile))
    if values.get("name", name_or_profile) != name_or_profile:
        raise ConfigError(f"{path}: name={values['name']!r} differs from the file name {name_or_profile!r}")
    return from_dict(EngineProfile, {**values, "source": str(path.relative_to(path.parents[2]))}, str(path))
