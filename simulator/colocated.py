"""The colocated cluster kind: replicas that each run prefills and decodes, behind one router
(simulator/cluster.py simulates it). Built from a resolved, checked configuration (simulator/run.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.announce import warnings_as_notes
from simulator.parts import policy_parameters, predictor_description
from simulator.result import SimulationResult, build_result
from simulator.workload import describe_source, load_workload, trace_file_name

if TYPE_CHECKING:
    from simulator.run import SimulationConfig


def run_colocated(cfg: SimulationConfig, out_dir: Path | None, progress: bool, started: float) -> SimulationResult:
    """Simulate a colocated `cfg` (checked by simulator.run.check_before_running); `started` is the
    perf_counter() time the run began (its summary's wall time counts from there)."""
    from simulator import parts
    from simulator.cluster import simulate
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState

    # Whatever the config can get wrong (cluster, policy, the model not fitting its GPUs, the workload)
    # is found before fitting the predictor, which takes up to a minute on a cold cache.
    cfg.cluster.validate(cfg.model)
    make_policy = parts.policy_factory(cfg.policy, cfg.model.max_model_len, cfg.hardware, cfg.engine)
    kv_blocks = kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster)
    workload = load_workload(cfg.workload, cfg.seed)
    notes: list[str] = []  # what building the predictor warned about, for the header (not as raw warnings)
    build_started = time.perf_counter()
    with warnings_as_notes(notes):
        predictor = parts.build_predictor(cfg, progress=progress or cfg.progress)
    predictor_build_s = time.perf_counter() - build_started
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len, content=workload.content)
    out = simulate(requests, make_policy, predictor, kv_blocks, block_size=cfg.cluster.block_size,
                   num_replicas=cfg.cluster.num_replicas, router=cfg.cluster.router,
                   kv_watermark=cfg.cluster.kv_watermark, seed=cfg.seed,
                   router_load_weight=cfg.cluster.router_load_weight,
                   fast_decode_runs=cfg.fast_decode_runs, progress=progress or cfg.progress)
    wall_s = time.perf_counter() - started
    setup = _setup(cfg, workload.name, out.kv_blocks_per_engine, predictor) | {"notes": notes}
    return build_result(cfg, out, setup, wall_s, out_dir, {"predictor_build_s": round(predictor_build_s, 3)})


def _setup(cfg: SimulationConfig, workload_name: str, kv_blocks_per_engine: int, predictor) -> dict:
    """What was simulated, for the summary."""
    gpus_per_replica = cfg.cluster.tp * cfg.cluster.pp
    return {
        "model": cfg.model.name, "hardware": cfg.hardware.name, "num_replicas": cfg.cluster.num_replicas,
        "tp": cfg.cluster.tp, "pp": cfg.cluster.pp, "router": cfg.cluster.router,
        "gpus_per_replica": gpus_per_replica, "num_gpus": cfg.cluster.num_replicas * gpus_per_replica,
        "policy": cfg.policy.name,
        "policy_params": policy_parameters(cfg.policy, cfg.hardware, cfg.engine), "workload": workload_name,
        "workload_source": describe_source(cfg.workload), "trace": trace_file_name(cfg.workload),
        "predictor": type(predictor).__name__, "predictor_calibration": getattr(predictor, "calibration", None),
        "predictor_description": predictor_description(cfg),
        # The fitted predictor prices iterations as this engine launches them (the linear one ignores it).
        "engine": cfg.engine.name if cfg.predictor == "fitted" else None,
        "seed": cfg.seed,
        "kv_blocks_per_engine": kv_blocks_per_engine, "kv_block_size": cfg.cluster.block_size,
    }
