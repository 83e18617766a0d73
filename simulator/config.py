"""Configuration dataclasses, one per Hydra config group.

These are plain dataclasses with no Hydra import so the GPU profiler (which runs where Hydra is not
installed) can read `conf/model/*.yaml` through `load_model_config`. The simulator's Hydra apps
register them as structured configs.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from simulator.paths import CONF_DIR

if TYPE_CHECKING:  # the pools' types sit with the cluster kind that runs them; nothing here builds one
    from simulator.disagg.config import DisaggConfig


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the file or field."""


def check_number(field: str, value, minimum: float, whole: bool = False, why: str = "") -> None:
    """Raise ConfigError naming `field` unless `value` is a finite number >= `minimum` (a whole number when
    `whole`). A bool is not a number here: `True` where a count belongs is a mistake, not 1."""
    if whole:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
    else:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and (isinstance(value, numbers.Integral) or math.isfinite(value)) and value >= minimum)
    if not ok:
        kind = "a whole number" if whole else "a finite number"
        raise ConfigError(f"{field}={value!r}: expected {kind} >= {minimum:g}" + (f" ({why})" if why else ""))


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a decoder-only transformer (Llama architecture). No weights are needed."""

    name: str
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    hf_id: str = ""
    norm: str = "rmsnorm"
    activation: str = "silu"
    gated_mlp: bool = True
    rope_theta: float = 10000.0
    dtype_bytes: int = 2

    def validate_tp(self, tp: int) -> None:
        """Raise ConfigError unless `tp` shards the attention heads evenly."""
        if tp < 1 or self.num_q_heads % tp or (self.num_kv_heads % tp and tp % self.num_kv_heads):
            raise ConfigError(
                f"cluster.tp={tp} does not divide model {self.name}'s heads "
                f"(num_q_heads={self.num_q_heads}, num_kv_heads={self.num_kv_heads})"
            )

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads each TP shard holds; with tp > num_kv_heads heads are replicated (as vLLM does)."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token(self, tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes one token takes on one GPU of a tp x pp shard (K and V, all its layers)."""
        layers = self.num_layers // pp
        return 2 * layers * self.kv_heads_per_gpu(tp) * self.head_dim * self.dtype_bytes

    def weight_bytes_per_gpu(self, tp: int = 1, pp: int = 1) -> int:
        """Parameter bytes on one GPU: layers split over pp stages, matrices over tp; embeddings on the
        first and last stage (counted once here, on the worst-case stage)."""
        h, hd = self.hidden_size, self.head_dim
        qkv = h * (self.num_q_heads + 2 * self.num_kv_heads) * hd
        out = self.num_q_heads * hd * h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        per_layer = (qkv + out + mlp) / tp + 2 * h
        embed = 2 * self.vocab_size * h / tp
        layers = -(-self.num_layers // pp)
        return int((per_layer * layers + embed) * self.dtype_bytes)


@dataclass(frozen=True)
class HardwareConfig:
    """Facts about one GPU type and which measured profile set describes it."""

    name: str
    gpu_name: str
    memory_gib: float
    memory_bandwidth_tbps: float
    bf16_dense_tflops: float
    nvlink_bandwidth_gbps: float
    profile: str
    comm_profile: str
    price_per_hour_usd: float = 0.0
    # Facts the kernel-time transfer needs (simulator/runtime/transfer.py, docs/gpu_transfer.md); a GPU
    # without a measured profile is priced from `transfer_from`'s tables with them.
    num_sms: int | None = None
    boost_clock_mhz: float | None = None
    l2_cache_mib: float | None = None
    pcie_bandwidth_gbps: float | None = None
    attention_kernel: str | None = None  # the kernel this GPU runs attention with, in words
    attention_efficiency: float | None = None  # its achieved fraction of bf16_dense_tflops on long prefills
    transfer_from: str | None = None  # a profiled GPU (conf/hardware name) to transfer kernel times from


def _load_yaml(group: str, name: str) -> tuple[Path, dict]:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} '{name}': no file {path}; known: {', '.join(known)}")
    with path.open() as f:
        return path, yaml.safe_load(f) or {}


def from_dict(cls, values: dict, source: str):
    """Build dataclass `cls` from a mapping, naming `source` and the field in any error."""
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {sorted(unknown)} for {cls.__name__}")
    try:
        return cls(**values)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{source}: {e}") from None


def load_model_config(name: str) -> ModelConfig:
    """Read conf/model/<name>.yaml."""
    path, values = _load_yaml("model", name)
    return from_dict(ModelConfig, values, str(path))


def load_hardware_config(name: str) -> HardwareConfig:
    """Read conf/hardware/<name>.yaml."""
    path, values = _load_yaml("hardware", name)
    return from_dict(HardwareConfig, values, str(path))


# ---------------------------------------------------------------------------------------------------
# Simulator config groups (cluster, policy, linear predictor). Mutable, so Hydra can compose them. The
# slo group's SLOConfig lives with the objectives it holds, in simulator/slo.py.
# ---------------------------------------------------------------------------------------------------

ROUTERS = ("round_robin", "least_outstanding_requests", "least_outstanding_tokens", "random", "prefix_aware")


@dataclass
class ClusterConfig:
    """Replicas behind one router, and how each replica's KV cache is sized.

    KV blocks per GPU = (gpu_memory_utilization x GPU memory - weights of one TP/PP shard
    - activation_reserve_gib) / (block_size x KV bytes per token of that shard). The reserve stands for
    what vLLM's profiling run finds besides weights: peak activations of a max-size batch, the sampler,
    CUDA graphs and non-torch allocations (NCCL, cuBLAS workspaces). Sizing without it overestimates the
    cache (REFERENCES.md). 2 GiB is our estimate for 7-8B models at 8k batched tokens from the
    "PyTorch activation peak memory" + "non_torch_memory" lines vLLM logs; set it from your own logs.
    """

    num_replicas: int = 1
    tp: int = 1
    pp: int = 1
    router: str = "round_robin"
    # router=prefix_aware: tokens of queued work one cached prompt token is worth (simulator/router.py).
    router_load_weight: float = 1.0
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    activation_reserve_gib: float = 2.0
    kv_watermark: float = 0.01  # share of blocks kept free when admitting a new request (vLLM's watermark)
    # Set: a disaggregated cluster (prefill and decode pools with their own replicas, tp and pp, and a KV
    # link); num_replicas/tp/pp above are then unused. Written as a mapping (conf/cluster/disagg_*.yaml),
    # resolved once with the rest of the configuration (simulator/disagg/config.py: resolve_disagg).
    disagg: DisaggConfig | None = None

    @property
    def num_gpus(self) -> int:
        """GPUs of the whole cluster: every pool's, when disaggregated."""
        if self.disagg:
            return self.disagg.num_gpus
        return self.num_replicas * self.tp * self.pp

    def validate(self, model: ModelConfig) -> None:
        """Raise ConfigError naming the field if this cluster cannot run `model`."""
        if self.num_replicas < 1:
            raise ConfigError(f"cluster.num_replicas={self.num_replicas}: need at least 1")
        model.validate_tp(self.tp)
        if self.pp < 1 or model.num_layers % self.pp:
            raise ConfigError(
                f"cluster.pp={self.pp} does not divide model {model.name}'s num_layers={model.num_layers}"
            )
        if self.router not in ROUTERS:
            raise ConfigError(f"cluster.router='{self.router}' is not one of {', '.join(ROUTERS)}")
        if not 0 <= self.router_load_weight < float("inf"):
            raise ConfigError(f"cluster.router_load_weight={self.router_load_weight}: need a number >= 0")
        if self.block_size < 1:
            raise ConfigError(f"cluster.block_size={self.block_size}: need at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"cluster.gpu_memory_utilization={self.gpu_memory_utilization}: need 0 < x <= 1")
        if self.activation_reserve_gib < 0:
            raise ConfigError(f"cluster.activation_reserve_gib={self.activation_reserve_gib}: need >= 0")
        if not 0 <= self.kv_watermark < 1:
            raise ConfigError(f"cluster.kv_watermark={self.kv_watermark}: need 0 <= x < 1")


@dataclass
class PolicyConfig:
    """Which scheduling policy each replica runs, and its parameters.

    Fields left None take the policy's own default (see its class); setting a field the policy does not
    take is an error. `params` carries the parameters of policies that need others.
    """

    name: str = "sarathi"
    max_batch_size: int | None = None
    chunk_size: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None  # vllm, sarathi, vllm_v1, sglang
    params: dict = field(default_factory=dict)

    def policy_kwargs(self) -> dict:
        """The parameters set in this config, as keyword arguments for the policy class."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "params")}
        return {k: v for k, v in (kwargs | dict(self.params)).items() if v is not None}


@dataclass
class LinearPredictorConfig:
    """Coefficients of `simulator.linear_predictor.LinearPredictor`, per pipeline stage, in seconds.

    None takes the roofline value for the model and GPU (see LinearPredictor.from_roofline).
    """

    fixed_s: float | None = None
    per_prefill_token_s: float | None = None
    per_decode_token_s: float | None = None
    per_kv_token_s: float | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first coefficient that is set but not a number >= 0 (a negative
        one can make an iteration take negative time)."""
        for f in fields(self):
            if getattr(self, f.name) is not None:
                check_number(f"linear_predictor.{f.name}", getattr(self, f.name), 0,
                             why="seconds; null = the roofline value")
