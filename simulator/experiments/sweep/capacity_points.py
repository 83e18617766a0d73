"""Capacity sweeps over Hydra configurations: each point composed and checked once (can it run at all?),
then searched by a worker from that resolved configuration."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from simulator.config import ConfigError
from simulator.experiments.sweep.space import SweepPoint, infeasibility_reason
from simulator.provenance import point_fingerprint


@dataclass(frozen=True)
class CapacityPointRunner:
    """Runs one point's capacity search: writes capacity.json / capacity.md into the point's directory and
    returns the table row plus its trials. `resolved` ({point id: (SimulationConfig, SearchConfig)}, as
    check_points fills it) holds the configurations composed and checked once in the parent; a point
    missing there is composed from its overrides. Picklable, so process pools and Ray can ship it."""

    resolved: dict = field(default_factory=dict)

    def __call__(self, point: SweepPoint, point_dir: Path) -> dict:
        from simulator.experiments.capacity import (
            TRIALS_JOURNAL,
            compose_capacity_config,
            record_row,
            run_capacity_search,
            write_capacity_outputs,
        )

        resolved = self.resolved.get(point.point_id)
        simulation, search = resolved if resolved is not None else compose_capacity_config(point.overrides)
        run_dir = point_dir / "capacity_run" if search.write_capacity_run else None
        # The point's trials are journaled: a point cut off mid-search resumes from its finished trials.
        record = run_capacity_search(simulation, search, progress=False, capacity_run_dir=run_dir,
                                     trials_journal=point_dir / TRIALS_JOURNAL)
        write_capacity_outputs(record, point_dir)
        row = record_row(record)
        return {**row, "trials": record["trials"]}


capacity_point_runner = CapacityPointRunner()  # composes each point from its overrides


def check_points(points: Sequence[SweepPoint], progress: bool = True,
                 fingerprints: dict[str, str] | None = None, resolved: dict[str, tuple] | None = None
                 ) -> dict[str, str]:
    """Compose every point and say why it cannot run: {point_id: reason} for the infeasible ones.

    Checks: the config composes and validates (known policy and parameters, TP divides the heads, PP
    the layers), the weights fit, the KV cache holds at least one max_model_len request, and the
    iteration-time predictor can be built (e.g. GPU profiles exist for that model and TP degree).
    Building each distinct predictor here, once, also fills the fitted model's disk cache before
    workers start, so they load it instead of all fitting it at once. Given a `fingerprints` dict, also
    fills it with {point_id: simulator.provenance.point_fingerprint} for every point that composes; given
    a `resolved` dict, fills it with {point_id: (SimulationConfig, SearchConfig)} for every point that can
    run, for CapacityPointRunner: each point is composed once per sweep.
    """
    import dataclasses

    from simulator.experiments.capacity import compose_capacity_config
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.run import build_predictor, policy_factory

    reasons = {}
    predictor_errors: dict[tuple, str | None] = {}
    for point in tqdm(points, desc="checking points", unit="point", disable=not progress, leave=False):
        try:
            simulation, search = compose_capacity_config(point.overrides)
            if fingerprints is not None:
                fingerprints[point.point_id] = point_fingerprint(simulation, search)
            policy_factory(simulation.policy, simulation.model.max_model_len, simulation.hardware,
                           simulation.engine)
            cluster = simulation.cluster

            def kv_tokens(model, hardware, tp, pp, cluster=cluster):
                try:
                    sized = dataclasses.replace(cluster, tp=tp, pp=pp)
                    return kv_cache_blocks_per_gpu(model, hardware, sized) * cluster.block_size
                except ConfigError:
                    return 0

            reason = infeasibility_reason(simulation.model, simulation.hardware, cluster.tp, cluster.pp, kv_tokens,
                                          simulation.model.max_model_len)
            if reason is None:
                cluster.validate(simulation.model)
                key = (simulation.predictor, simulation.model, simulation.hardware, cluster.tp, cluster.pp,
                       simulation.engine, simulation.cpu_overhead_s, repr(simulation.linear_predictor))
                if key not in predictor_errors:
                    try:
                        build_predictor(simulation)
                        predictor_errors[key] = None
                    except ConfigError as e:  # missing or unreadable profiles: no trial could run
                        predictor_errors[key] = f"no iteration-time predictor: {e}"
                reason = predictor_errors[key]
        except Exception as e:  # noqa: BLE001 - any composition error makes the point infeasible, named
            reason = f"{type(e).__name__}: {e}"
        if reason:
            reasons[point.point_id] = reason
        elif resolved is not None:
            resolved[point.point_id] = (simulation, search)
    return reasons


