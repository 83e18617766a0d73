"""Configuration sweeps: enumerate a space of configurations, drop the ones that cannot run, run the
rest (a capacity search each, by default) in parallel, and keep every outcome in one table.

A space is a YAML file (see conf/sweep/ and docs/capacity_and_sweeps.md):

    name: policies
    base: [model=mistral-7b, hardware=h100]      # Hydra overrides every point gets
    grid:                                          # cross product of these axes ...
      search: [strict, relaxed]
    variants:                                      # ... times the union of these sub-grids
      - {policy: [orca], policy.max_batch_size: [16]}
      - {policy: [sarathi], policy.chunk_size: [512, 2048]}

Each point is a list of Hydra overrides. Results go to `<out>/results.jsonl`, one JSON line per
finished point, appended as points finish, so an interrupted sweep resumes by skipping every point
already there whose fingerprint (its resolved configuration, trace, code and profiles:
simulator/provenance.point_fingerprint) is unchanged, and reruns the ones whose inputs changed;
`results.parquet` / `results.csv` (one row per point) and `trials.parquet` (one row per capacity-search
trial) are rebuilt from it. A point that raises is recorded with its error and the
sweep goes on.

    space.py            the space file and its points
    results.py          results.jsonl and the tables rebuilt from it
    execute.py          running the points (serially, in processes, on Ray), resumably
    capacity_points.py  a capacity search per point: which points can run, and the point runner
    cli.py              servesim-sweep and its report
"""
from simulator.experiments.sweep.capacity_points import (
    CapacityPointRunner,
    capacity_point_runner,
    check_points,
)
from simulator.experiments.sweep.execute import PointRunner, SweepOutcome, run_sweep
from simulator.experiments.sweep.results import RESULTS_JSONL, append_record, read_records, write_tables
from simulator.experiments.sweep.space import (
    SweepPoint,
    SweepSpace,
    enumerate_points,
    infeasibility_reason,
    load_space,
    parse_space,
)

__all__ = [
    "RESULTS_JSONL", "CapacityPointRunner", "PointRunner", "SweepOutcome", "SweepPoint", "SweepSpace",
    "append_record", "capacity_point_runner", "check_points", "enumerate_points", "infeasibility_reason",
    "load_space", "parse_space", "read_records", "run_sweep", "write_tables",
]
