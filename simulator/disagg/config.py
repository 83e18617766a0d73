"""The `cluster.disagg` section: a prefill pool, a decode pool and the link between them.

An empty `cluster.disagg` (the default) is an ordinary colocated cluster. A non-empty one, e.g.
conf/cluster/disagg_1p1d.yaml, looks like

    disagg:
      prefill: {num_replicas: 1, tp: 1, pp: 1, hardware: null, router: least_outstanding_tokens,
                policy: {name: vllm}}
      decode:  {num_replicas: 1, tp: 1, pp: 1, hardware: h200, router: least_outstanding_requests,
                policy: {name: sarathi, chunk_size: 2048, max_batch_size: 256}}
      link: {preset: nvlink, bandwidth_gbytes_per_s: null, latency_s: null, layer_streaming: false}
      ttft_includes_transfer: false

and the top-level cluster.num_replicas / tp / pp are not used (each pool has its own). `hardware: null`
takes the top-level `hardware`. Link presets are conf/link/<preset>.yaml; a field set here overrides it.
Hydra takes the section as the plain mapping YAML writes (so overrides like
`cluster.disagg.decode.num_replicas=2` work); `resolve_disagg` turns it, once, where the SimulationConfig is
resolved (simulator/run.py), into the typed DisaggConfig below (each pool's GPU and policy config loaded,
the link's preset applied) and validates it against the model; every error names the field. A run and
the experiments above it use that object as it is.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulator.config import (
    ROUTERS,
    ConfigError,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    _load_yaml,
    from_dict,
    load_hardware_config,
)

SECTION = "cluster.disagg"


@dataclass
class PoolConfig:
    """One pool of identical replicas (tp x pp GPUs each) behind its own router, running one policy."""

    num_replicas: int = 1
    tp: int = 1
    pp: int = 1
    hardware: HardwareConfig | None = None  # written as a conf/hardware name; None = the top-level hardware
    router: str = "least_outstanding_requests"
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(name="vllm"))

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def num_gpus(self) -> int:
        return self.num_replicas * self.tp * self.pp


@dataclass
class LinkConfig:
    """The KV-transfer link out of each prefill replica, as the section writes it: bandwidth per GPU port
    and a fixed latency, from a preset or set here (resolve_link turns it into a ResolvedLink).

    A replica-to-replica transfer runs over min(prefill GPUs, decode GPUs) ports in parallel (each GPU
    sends its own shard), so the replica's link carries that many times `bandwidth_gbytes_per_s`.
    layer_streaming: send each layer's KV as the prefill computes it (Splitwise / DistServe's pull
    overlapped with compute), so only the last layer's share is left at the prefill's end.
    """

    preset: str | None = "nvlink"  # conf/link/<preset>.yaml; None = both numbers set here
    bandwidth_gbytes_per_s: float | None = None  # 1e9 bytes per second, per GPU port
    latency_s: float | None = None  # per transfer: setup and first-byte latency
    layer_streaming: bool = False


@dataclass(frozen=True)
class ResolvedLink:
    """A link's numbers after the preset is applied."""

    name: str
    bandwidth_bytes_per_s: float  # per GPU port
    latency_s: float
    layer_streaming: bool


@dataclass
class DisaggConfig:
    """A disaggregated cluster, resolved: its two pools and the link between them (its preset applied)."""

    prefill: PoolConfig
    decode: PoolConfig
    link: ResolvedLink
    # False (DistServe): the first token leaves the prefill replica at the prefill's end, so TTFT ends
    # there and the transfer shows up in the first inter-token gap (TBT/TPOT). True: the first token
    # reaches the user only once the KV is on the decode replica (TTFT includes the transfer).
    ttft_includes_transfer: bool = False

    @property
    def num_gpus(self) -> int:
        return self.prefill.num_gpus + self.decode.num_gpus


def resolve_disagg(values: Mapping | None, model: ModelConfig, hardware: HardwareConfig) -> DisaggConfig | None:
    """The `cluster.disagg` section as YAML writes it -> its DisaggConfig, parsed and validated against
    `model`; None for an empty section (a colocated cluster). `hardware` is the top-level GPU, which a pool
    without its own runs on."""
    if not values:
        return None
    disagg = parse_disagg(values, hardware)
    validate_disagg(disagg, model)
    return disagg


def parse_disagg(values: Mapping, hardware: HardwareConfig | None = None) -> DisaggConfig:
    """DisaggConfig from the `cluster.disagg` mapping; ConfigError naming the field if anything is off.
    `hardware`: the top-level GPU (a pool naming it shares its config instead of reading the file again)."""
    values = dict(values)
    for required in ("prefill", "decode"):
        if not isinstance(values.get(required), Mapping):
            raise ConfigError(f"{SECTION}.{required} is missing: a disaggregated cluster needs both pools")
    pools = {name: parse_pool(values.pop(name), f"{SECTION}.{name}", hardware) for name in ("prefill", "decode")}
    link = resolve_link(from_dict(LinkConfig, dict(values.pop("link", None) or {}), f"{SECTION}.link"))
    return from_dict(DisaggConfig, {**values, **pools, "link": link}, SECTION)


def parse_pool(values: Mapping, where: str, hardware: HardwareConfig | None) -> PoolConfig:
    """One pool's PoolConfig from its mapping (`where` names it in errors): its GPU read from conf/hardware
    (see _pool_gpu) and its policy built from its PolicyConfig fields."""
    values = dict(values)
    policy = values.pop("policy", {"name": "vllm"})
    gpu = values.pop("hardware", None)
    pool = from_dict(PoolConfig, values, where)
    if not isinstance(policy, Mapping) or "name" not in policy:
        raise ConfigError(f"{where}.policy.name is missing")
    return dataclasses.replace(pool, hardware=_pool_gpu(gpu, hardware, where),
                               policy=from_dict(PolicyConfig, dict(policy), f"{where}.policy"))


def _pool_gpu(name: str | None, hardware: HardwareConfig | None, where: str) -> HardwareConfig | None:
    """The GPU a pool names: None when it names none (the top-level one applies, whatever it is), the
    top-level `hardware` itself when it names that one, else conf/hardware/<name>.yaml."""
    if name in (None, ""):
        return None
    if hardware is not None and name == hardware.name:
        return hardware
    try:
        return load_hardware_config(name)
    except ConfigError as e:
        raise ConfigError(f"{where}.hardware: {e}") from None


def validate_disagg(config: DisaggConfig, model: ModelConfig) -> None:
    """Raise ConfigError naming the field if a pool cannot run `model` or a setting is out of range."""
    for name in ("prefill", "decode"):
        pool: PoolConfig = getattr(config, name)
        where = f"{SECTION}.{name}"
        if pool.num_replicas < 1:
            raise ConfigError(f"{where}.num_replicas={pool.num_replicas}: need at least 1")
        try:
            model.validate_tp(pool.tp)
        except ConfigError as e:
            raise ConfigError(f"{where}.tp: {e}") from None
        if pool.pp < 1 or model.num_layers % pool.pp:
            raise ConfigError(f"{where}.pp={pool.pp} does not divide model {model.name}'s "
                              f"num_layers={model.num_layers}")
        if pool.router not in ROUTERS:
            raise ConfigError(f"{where}.router='{pool.router}' is not one of {', '.join(ROUTERS)}")
    _check_decode_policy(config.decode.policy.name)


def _check_decode_policy(name: str) -> None:
    """ConfigError unless policy `name` can take requests that arrive already admitted, their KV sized
    for prompt + 1 tokens (DecodeReplica.start): one that reserves a request's full length at admission
    and never allocates as it decodes (Policy.reserves_full_length) would decode into KV it never got."""
    from policies import POLICIES

    if name not in POLICIES or not POLICIES[name].reserves_full_length:
        return  # an unknown name is reported, with the known ones, when the pool's policy is built
    usable = sorted(n for n, cls in POLICIES.items() if not cls.reserves_full_length)
    choices = ", ".join(usable[:-1]) + f" or {usable[-1]}" if len(usable) > 1 else usable[0]
    raise ConfigError(
        f"{SECTION}.decode.policy.name='{name}': {name} reserves each request's full length when it admits "
        f"it from its waiting queue and allocates nothing as it decodes, but a decode pool receives "
        f"requests already admitted with KV for prompt + 1 tokens; use {choices} for the decode pool "
        f"({name} runs as the prefill pool)")


def pool_hardware(pool: PoolConfig, default: HardwareConfig) -> HardwareConfig:
    """The GPU the pool runs on: its own, else `default` (the top-level hardware)."""
    return default if pool.hardware is None else pool.hardware


def resolve_link(link: LinkConfig) -> ResolvedLink:
    """Apply conf/link/<preset>.yaml, then the fields set in the section; check they are positive."""
    numbers = {"bandwidth_gbytes_per_s": None, "latency_s": None}
    name = link.preset or "custom"
    if link.preset:
        path, preset = _load_yaml("link", link.preset)
        unknown = set(preset) - set(numbers) - {"name"}
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {sorted(unknown)}; expected "
                              f"{', '.join(numbers)}")
        numbers.update({k: preset.get(k) for k in numbers})
    for key in numbers:
        if getattr(link, key) is not None:
            numbers[key] = getattr(link, key)
    bandwidth, latency = numbers["bandwidth_gbytes_per_s"], numbers["latency_s"]
    if bandwidth is None or not float(bandwidth) > 0:
        raise ConfigError(f"{SECTION}.link.bandwidth_gbytes_per_s={bandwidth}: need a positive number "
                          f"(or a preset: {', '.join(link_presets())})")
    if latency is None or not float(latency) >= 0:
        raise ConfigError(f"{SECTION}.link.latency_s={latency}: need a number >= 0")
    return ResolvedLink(name, float(bandwidth) * 1e9, float(latency), bool(link.layer_streaming))


def link_presets() -> list[str]:
    from simulator.paths import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "link").glob("*.yaml"))


def transfer_bytes_per_token(model: ModelConfig, decode: PoolConfig) -> int:
    """KV bytes that must land on a decode replica per prompt token: its GPUs' shards summed.

    kv_bytes_per_token(tp, pp) is one GPU's shard; a decode replica has tp x pp of them. With tp above
    the KV head count heads are replicated, and each replica GPU needs its copy, so this can exceed the
    model's unsharded KV size. The prefill side's layout does not change what the decode side needs.
    """
    return model.kv_bytes_per_token(decode.tp, decode.pp) * decode.tp * decode.pp

