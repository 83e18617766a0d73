"""A sweep's space: the YAML file (name, base overrides, grid, variants), the points it enumerates, and
which parallel layouts cannot serve a model at all."""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from simulator.config import ConfigError, HardwareConfig, ModelConfig


@dataclass(frozen=True)
class SweepPoint:
    """One configuration: the Hydra overrides that build it and the axis values that vary."""

    overrides: tuple[str, ...]
    axes: tuple[tuple[str, str], ...]  # (axis name, value) for the table's columns

    @property
    def point_id(self) -> str:
        """Stable 12-hex-digit id from the sorted overrides (order of axes does not matter)."""
        text = "\n".join(sorted(self.overrides))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class SweepSpace:
    """A parsed space file."""

    name: str
    base: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    variants: list[dict[str, list]] = field(default_factory=list)


# --- the space -----------------------------------------------------------------------------------


def load_space(path: str | Path) -> SweepSpace:
    """Read a space YAML file; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sweep space {path} does not exist")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    return parse_space(raw, source=str(path))


def parse_space(raw: dict, source: str = "<space>") -> SweepSpace:
    """Validate a space mapping (see the module docstring for its shape)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys name, base, grid, variants")
    unknown = set(raw) - {"name", "base", "grid", "variants"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; expected name, base, grid, variants")
    base = raw.get("base") or []
    if not isinstance(base, list) or not all(isinstance(o, str) and "=" in o for o in base):
        raise ConfigError(f"{source}: 'base' must be a list of Hydra overrides like 'model=mistral-7b'")

    def axes(mapping, where: str) -> dict[str, list]:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{source}: '{where}' must map an override key to a list of values")
        checked = {}
        for key, values in mapping.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(f"{source}: {where}.{key} has no values")
            checked[str(key)] = values
        return checked

    grid = axes(raw.get("grid") or {}, "grid")
    variants_raw = raw.get("variants") or []
    if not isinstance(variants_raw, list):
        raise ConfigError(f"{source}: 'variants' must be a list of sub-grids")
    variants = [axes(v, f"variants[{i}]") for i, v in enumerate(variants_raw)]
    return SweepSpace(name=str(raw.get("name") or Path(source).stem), base=list(base), grid=grid, variants=variants)


def _format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def enumerate_points(space: SweepSpace) -> list[SweepPoint]:
    """Every point of the space, in a stable order, duplicates removed."""
    variants = space.variants or [{}]
    points, seen = [], set()
    for variant in variants:
        axes = {**space.grid, **variant}
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            chosen = tuple((k, _format_value(v)) for k, v in zip(keys, combo))
            overrides = tuple(space.base) + tuple(f"{k}={v}" for k, v in chosen)
            point = SweepPoint(overrides=overrides, axes=chosen)
            if point.point_id not in seen:
                seen.add(point.point_id)
                points.append(point)
    return points


# --- what can run at all -------------------------------------------------------------------------


def infeasibility_reason(
    model: ModelConfig,
    hardware: HardwareConfig,
    tp: int,
    pp: int,
    kv_tokens_available: Callable[[ModelConfig, HardwareConfig, int, int], int],
    min_kv_tokens: int,
) -> str | None:
    """Why this parallel layout cannot serve `model` on `hardware`, or None when it can.

    `kv_tokens_available(model, hardware, tp, pp)` is the simulator's own KV sizing (tokens of KV cache
    one replica holds after weights and reserves); a layout must hold at least `min_kv_tokens` (one
    longest request) to serve anything.
    """
    try:
        model.validate_tp(tp)
    except ConfigError as e:
        return str(e)
    if pp < 1 or model.num_layers % pp:
        return f"cluster.pp={pp} does not divide model {model.name}'s {model.num_layers} layers"
    weights_gib = model.weight_bytes_per_gpu(tp, pp) / 2**30
    if weights_gib >= hardware.memory_gib:
        return f"weights need {weights_gib:.1f} GiB per GPU, more than {hardware.name}'s {hardware.memory_gib} GiB"
    kv_tokens = kv_tokens_available(model, hardware, tp, pp)
    if kv_tokens < min_kv_tokens:
        return (
            f"KV cache holds {max(kv_tokens, 0)} tokens per replica after {weights_gib:.1f} GiB of weights, "
            f"fewer than one {min_kv_tokens}-token request"
        )
    return None


