"""Run one disaggregated simulation from a SimulationConfig whose `cluster.disagg` is set.

simulator.run.run_simulation hands such configs here; the result has the same shape as a colocated
run's (requests / iterations tables, summary, records) plus the hand-off columns and the summary's
`disaggregation` block (simulator/disagg/metrics.py).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.announce import warnings_as_notes
from simulator.cluster import PolicyFactory
from simulator.config import ConfigError
from simulator.disagg.cluster import LinkParts, PoolParts, simulate_disaggregated
from simulator.disagg.config import DisaggConfig, pool_hardware, transfer_bytes_per_token

if TYPE_CHECKING:
    from simulator.run import SimulationConfig


def disagg_config(cfg) -> DisaggConfig:
    """The `cluster.disagg` of a SimulationConfig: resolved (parsed and validated) with the configuration
    (simulator/run.py: cluster_from_dict), so it is only read here; ConfigError for a section left as a
    plain mapping, which nothing resolved."""
    disagg = cfg.cluster.disagg
    if not isinstance(disagg, DisaggConfig):
        raise ConfigError(f"cluster.disagg: expected resolved pools (a DisaggConfig), got {type(disagg).__name__}; "
                          f"SimulationConfig.from_dict resolves the mapping")
    return disagg


def pool_simulation_config(cfg, disagg: DisaggConfig, name: str):
    """A colocated SimulationConfig for one pool (its hardware, tp, pp, policy): what builds its parts."""
    pool = getattr(disagg, name)
    cluster = dataclasses.replace(cfg.cluster, num_replicas=pool.num_replicas, tp=pool.tp, pp=pool.pp,
                                  router=pool.router, disagg=None)
    simulation: SimulationConfig = dataclasses.replace(
        cfg, hardware=pool_hardware(pool, cfg.hardware), cluster=cluster, policy=pool.policy)
    return simulation


def pool_policy_and_blocks(cfg, disagg: DisaggConfig, name: str) -> tuple[PolicyFactory, int]:
    """One pool's policy factory and KV blocks per GPU: ConfigError naming the pool when its policy
    parameters are wrong or the model does not fit its GPUs."""
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.parts import policy_factory

    pool_cfg = pool_simulation_config(cfg, disagg, name)
    try:
        kv_blocks = kv_cache_blocks_per_gpu(pool_cfg.model, pool_cfg.hardware, pool_cfg.cluster)
        make_policy = policy_factory(pool_cfg.policy, pool_cfg.model.max_model_len, pool_cfg.hardware,
                                     pool_cfg.engine)
    except ConfigError as e:
        raise ConfigError(f"cluster.disagg.{name}: {e}") from None
    return make_policy, kv_blocks


def build_pool(cfg, disagg: DisaggConfig, name: str, make_policy: PolicyFactory, kv_blocks: int,
               progress: bool = False) -> PoolParts:
    """The pool's parts: its policy and KV size (pool_policy_and_blocks) and its fitted predictor."""
    from simulator.parts import build_predictor

    pool = getattr(disagg, name)
    return PoolParts(pool.num_replicas, make_policy, build_predictor(pool_simulation_config(cfg, disagg, name), progress),
                     kv_blocks, pool.gpus_per_replica, pool.router)


def run_disaggregated(cfg, out_dir: str | Path | None = None, progress: bool = False,
                      started: float | None = None):
    """Simulate a disaggregated `cfg` (SimulationConfig) and return a simulator.result.SimulationResult.
    `started`: the perf_counter() time the run began (default: now)."""
    from simulator.disagg.metrics import disaggregation_summary, handoff_columns
    from simulator.request import RequestState
    from simulator.result import build_result
    from simulator.workload import load_workload

    started = time.perf_counter() if started is None else started
    disagg = disagg_config(cfg)
    # Whatever the config can get wrong in either pool's parts or the workload is found before the first
    # pool's predictor is fitted (up to a minute on a cold cache); the section itself was checked when the
    # configuration was resolved.
    policies_and_blocks = {name: pool_policy_and_blocks(cfg, disagg, name) for name in ("prefill", "decode")}
    link = LinkParts(disagg.link.bandwidth_bytes_per_s, disagg.link.latency_s,
                     cfg.model.num_layers if disagg.link.layer_streaming else 0)
    workload = load_workload(cfg.workload, cfg.seed)
    notes: list[str] = []  # what building the predictors warned about, for the header
    build_started = time.perf_counter()
    with warnings_as_notes(notes):
        prefill, decode = (build_pool(cfg, disagg, name, *policies_and_blocks[name], progress or cfg.progress)
                           for name in ("prefill", "decode"))
    predictor_build_s = time.perf_counter() - build_started
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len, content=workload.content)
    out = simulate_disaggregated(
        requests, prefill, decode, link, transfer_bytes_per_token(cfg.model, disagg.decode),
        block_size=cfg.cluster.block_size, kv_watermark=cfg.cluster.kv_watermark, seed=cfg.seed,
        fast_decode_runs=cfg.fast_decode_runs, progress=progress or cfg.progress,
        ttft_includes_transfer=disagg.ttft_includes_transfer)
    columns = handoff_columns(out.handoff)
    out.records.extra_columns.update(columns)
    wall_s = time.perf_counter() - started
    setup = _setup(cfg, disagg, workload.name, out, prefill) | {"notes": notes}
    return build_result(cfg, out, setup, wall_s, out_dir, {"disaggregation": disaggregation_summary(out, columns),
                                                           "predictor_build_s": round(predictor_build_s, 3)})


def _setup(cfg, disagg: DisaggConfig, workload_name: str, out, prefill: PoolParts) -> dict:
    """The summary's `setup`: the colocated keys (pool pairs written prefill/decode) plus `disagg`."""
    from simulator.parts import predictor_description
    from simulator.workload import describe_source, trace_file_name

    pools = {name: getattr(disagg, name) for name in ("prefill", "decode")}
    hardware = {name: pool_hardware(pool, cfg.hardware).name for name, pool in pools.items()}
    policies = {name: pool.policy for name, pool in pools.items()}

    def pair(values: dict) -> str:
        return f"{values['prefill']}/{values['decode']}"

    return {
        "model": cfg.model.name,
        "hardware": cfg.hardware.name if len(set(hardware.values())) == 1 else pair(hardware),
        "num_replicas": disagg.prefill.num_replicas + disagg.decode.num_replicas,
        "tp": pair({n: p.tp for n, p in pools.items()}), "pp": pair({n: p.pp for n, p in pools.items()}),
        "router": pair({n: p.router for n, p in pools.items()}),
        "gpus_per_replica": pair({n: p.gpus_per_replica for n, p in pools.items()}),
        "policy": f"disagg({pair({n: p.name for n, p in policies.items()})})",
        "policy_params": {f"{n}.{k}": v for n, p in policies.items() for k, v in p.policy_kwargs().items()},
        "workload": workload_name, "workload_source": describe_source(cfg.workload),
        "trace": trace_file_name(cfg.workload), "predictor": type(prefill.predictor).__name__,
        "predictor_description": predictor_description(cfg), "seed": cfg.seed,
        "kv_blocks_per_engine": out.kv_blocks_per_engine["decode"], "kv_block_size": cfg.cluster.block_size,
        "num_gpus": disagg.num_gpus,
        "disagg": {
            **{name: {"num_replicas": p.num_replicas, "tp": p.tp, "pp": p.pp, "hardware": hardware[name],
                      "router": p.router, "policy": policies[name].name,
                      "policy_params": policies[name].policy_kwargs(),
                      "kv_blocks_per_engine": out.kv_blocks_per_engine[name]} for name, p in pools.items()},
            "link": {"name": disagg.link.name, "bandwidth_gbytes_per_s": disagg.link.bandwidth_bytes_per_s / 1e9,
                     "latency_s": disagg.link.latency_s, "layer_streaming": disagg.link.layer_streaming},
            "ttft_includes_transfer": disagg.ttft_includes_transfer,
            "kv_transfer_bytes_per_token": transfer_bytes_per_token(cfg.model, disagg.decode),
        },
    }
