"""Configuration dataclasses, one per Hydra config group.

These are plain dataclasses with no Hydra import so the GPU profiler (which runs where Hydra is not
installed) can read `conf/model/*.yaml` through `load_model_config`. The simulator's Hydra apps
register them as structured configs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from simulator.paths import CONF_DIR


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the file or field."""


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
