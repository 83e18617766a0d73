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
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import wait as wait_for_connections
from pathlib import Path

import pandas as pd
import yaml
from tqdm import tqdm

from simulator.atomic import write_atomically, write_text_atomically
from simulator.config import ConfigError, HardwareConfig, ModelConfig
from simulator.paths import REPO_ROOT
from simulator.provenance import check_fingerprint, point_fingerprint

RESULTS_JSONL = "results.jsonl"
DONE_STATUSES = ("ok", "infeasible_config")
# Columns naming a configuration, copied onto each trial row so trials can be grouped by configuration.
CONFIG_FIELDS = ("model", "hardware", "policy", "chunk_size", "max_batch_size", "tp", "pp", "num_replicas",
                 "workload", "slo_name")
TEXT_COLUMNS = {"point_id", "overrides", "status", "error", "traceback", "violations", "capacity_status"}


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


# --- the results store ---------------------------------------------------------------------------


def read_records(out_dir: Path) -> dict[str, dict]:
    """Finished records by point id (the last line for a point wins; a torn last line is ignored)."""
    path = Path(out_dir) / RESULTS_JSONL
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the sweep was killed mid-write; that point simply runs again
            records[record["point_id"]] = record
    return records


def append_record(out_dir: Path, record: dict) -> None:
    """Append one point's record as a single JSON line, flushed to disk before returning."""
    path = Path(out_dir) / RESULTS_JSONL
    line = json.dumps(record, default=str) + "\n"
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn line from a killed run: start ours on a fresh line
                line = "\n" + line
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_tables(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild results.parquet / results.csv (one row per point) and trials.parquet (one row per
    trial) from results.jsonl; return both tables."""
    out_dir = Path(out_dir)
    records = list(read_records(out_dir).values())
    rows, trial_rows = [], []
    for record in records:
        row = {k: v for k, v in record.items() if k not in ("trials", "axes", "overrides", "metrics")}
        row["overrides"] = " ".join(record.get("overrides", []))
        row.update(record.get("axes", {}))
        row.update(record.get("metrics", {}))
        rows.append(row)
        config = {k: v for k, v in row.items() if k in CONFIG_FIELDS}
        for trial in record.get("trials", []):
            flat = {k: v for k, v in trial.items() if k not in ("metrics", "violations")}
            flat["violations"] = "; ".join(trial.get("violations", []))
            flat.update({k: _as_float(v) for k, v in trial.get("metrics", {}).items()})
            trial_rows.append({"point_id": record["point_id"], **config, **record.get("axes", {}), **flat})
    table = pd.DataFrame(rows)
    trials = pd.DataFrame(trial_rows)
    if len(table):
        table = _numeric_columns(table)
        write_atomically(out_dir / "results.parquet", lambda temp: table.to_parquet(temp, index=False))
        write_atomically(out_dir / "results.csv", lambda temp: table.to_csv(temp, index=False))
    if len(trials):
        trials = _numeric_columns(trials)
        write_atomically(out_dir / "trials.parquet", lambda temp: trials.to_parquet(temp, index=False))
    return table, trials


def _as_float(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def _numeric_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Turn columns whose every value parses as a number into numbers (axis values arrive as strings)."""
    for column in table.columns:
        if column in TEXT_COLUMNS:
            continue
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            converted = pd.to_numeric(table[column].map(_as_float), errors="coerce")
            if converted.notna().sum() == table[column].notna().sum():
                table[column] = converted
    return table


# --- running -------------------------------------------------------------------------------------

PointRunner = Callable[[SweepPoint, Path], dict]


def _run_one(runner: PointRunner, point: SweepPoint, point_dir: str) -> dict:
    """Run one point and turn any exception into a failure record (runs inside a worker)."""
    start = time.perf_counter()
    base = {"point_id": point.point_id, "overrides": list(point.overrides), "axes": dict(point.axes)}
    try:
        Path(point_dir).mkdir(parents=True, exist_ok=True)
        result = runner(point, Path(point_dir))
        record = {**base, "status": "ok", "error": "", **result}
    except Exception as e:  # noqa: BLE001 - a failing point must not stop the sweep
        record = {**base, "status": "error", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc(limit=8)}
    record["point_wall_s"] = time.perf_counter() - start
    return record


@dataclass
class SweepOutcome:
    """What one call of `run_sweep` did."""

    ran: int
    skipped: int
    failed: int
    table: pd.DataFrame
    trials: pd.DataFrame
    wall_s: float
    stale: int = 0  # finished points run again because their fingerprint changed


def run_sweep(
    points: Sequence[SweepPoint],
    out_dir: str | Path,
    runner: PointRunner,
    infeasible: dict[str, str] | None = None,
    executor: str = "local",
    workers: int = 0,
    ray_address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    fingerprint: dict | None = None,
    point_fingerprints: dict[str, str] | None = None,
) -> SweepOutcome:
    """Run `runner` on every point not already finished in `out_dir`.

    `infeasible` maps point ids to a reason; those points are recorded without running.
    `executor` is "serial", "local" (a process pool of `workers`, 0 = all cores) or "ray"
    (tasks on the Ray cluster at `ray_address`; None starts a local Ray instance).
    Failed points from an earlier call are skipped unless `retry_failed`.
    `fingerprint` (simulator.provenance.results_fingerprint()): what computes the points; a directory whose
    finished points were computed under another fingerprint is refused (StaleResultsError), never mixed.
    `point_fingerprints` ({point id: simulator.provenance.point_fingerprint}): what each point's result
    depends on; it is stored in the point's record, and a finished point recorded under another one (or
    none) runs again. Points missing from the mapping are compared as None.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_records(out_dir)
    if fingerprint is not None:
        check_fingerprint(out_dir, fingerprint, finished=len(done), results_files=(RESULTS_JSONL,))
    finished = set(DONE_STATUSES) | (set() if retry_failed else {"error"})
    infeasible = infeasible or {}
    todo, skipped, stale = [], 0, 0
    point_fingerprint = (lambda point: None) if point_fingerprints is None else point_fingerprints.get
    for point in points:
        record = done.get(point.point_id)
        if record and record["status"] in finished:
            if point_fingerprints is None or record.get("fingerprint") == point_fingerprint(point.point_id):
                skipped += 1
                continue
            stale += 1
        if point.point_id in infeasible:
            append_record(out_dir, {"point_id": point.point_id, "overrides": list(point.overrides),
                                    "axes": dict(point.axes), "status": "infeasible_config",
                                    "error": infeasible[point.point_id],
                                    "fingerprint": point_fingerprint(point.point_id)})
        else:
            todo.append(point)

    failed = 0
    bar = tqdm(total=len(todo), desc="sweep points", unit="point", disable=not progress)
    try:
        for record in _execute(todo, out_dir, runner, executor, workers, ray_address):
            record["fingerprint"] = point_fingerprint(record["point_id"])
            append_record(out_dir, record)
            failed += record["status"] == "error"
            bar.update(1)
            bar.set_postfix(failed=failed)
    except KeyboardInterrupt:
        write_tables(out_dir)  # the tables then hold every point recorded before the interrupt
        raise
    finally:
        bar.close()
    table, trials = write_tables(out_dir)
    return SweepOutcome(len(todo), skipped, failed, table, trials, time.perf_counter() - start, stale)


def _execute(todo, out_dir, runner, executor, workers, ray_address) -> Iterable[dict]:
    """Yield each point's record as soon as it finishes."""
    point_dir = lambda p: str(out_dir / "points" / p.point_id)
    if executor == "serial" or (executor == "local" and (workers == 1 or len(todo) <= 1)):
        for point in todo:
            yield _run_one(runner, point, point_dir(point))
    elif executor == "local":
        yield from _execute_in_processes(todo, runner, point_dir, min(workers or os.cpu_count() or 1, len(todo)))
    elif executor == "ray":
        yield from _execute_on_ray(todo, runner, point_dir, workers, ray_address)
    else:
        raise ConfigError(f"sweep executor='{executor}' is not one of serial, local, ray")


def _execute_in_processes(todo, runner, point_dir, workers: int) -> Iterable[dict]:
    """Run each point in a process of its own, `workers` at a time, yielding each record as it arrives.

    One process per point (not a shared pool) so that a worker killed from outside (the OOM killer, a
    segfault) costs only its own point, recorded as failed with how it died, and the sweep goes on.
    On Ctrl-C the records already sent are yielded before KeyboardInterrupt propagates; workers ignore
    SIGINT so the parent decides, and stop themselves when the parent dies (_worker_main).
    """
    context = get_context("spawn")  # workers start clean (no inherited threads from pyarrow or tqdm)
    waiting = list(todo)
    running: dict = {}  # the receiving end of each worker's pipe -> (process, point)
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                point = waiting.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker_main, daemon=True,
                                          args=(runner, point, point_dir(point), send, os.getpid()))
                process.start()
                send.close()  # the parent's copy; the pipe then reads as closed once the worker is gone
                running[receive] = (process, point)
            for receive in wait_for_connections(list(running)):
                process, point = running.pop(receive)
                yield _collect(receive, process, point)
    except KeyboardInterrupt:
        finished = [receive for receive in running if receive.poll()]
        for receive in finished:
            process, point = running.pop(receive)
            yield _collect(receive, process, point)
        raise
    finally:  # interrupted or abandoned: the points still computing are given up
        for process, _ in running.values():
            process.kill()
            process.join()


def _collect(receive, process, point) -> dict:
    """The record a worker sent, or a failure record saying how the worker died without sending one."""
    try:
        record = receive.recv()
    except (EOFError, OSError):
        record = None
    receive.close()
    process.join()
    if record is not None:
        return record
    code = process.exitcode
    how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 and -code in
           signal.valid_signals() else f"exit code {code}")
    return {"point_id": point.point_id, "overrides": list(point.overrides), "axes": dict(point.axes),
            "status": "error", "error": f"worker process died ({how}) before finishing the point; "
                                        f"out of memory is the usual cause of SIGKILL"}


PARENT_CHECK_S = 0.5


def _worker_main(runner, point, point_dir, send, parent_pid: int) -> None:
    """A worker: run one point and send its record to the parent. It ignores SIGINT (the parent handles
    Ctrl-C) and exits as soon as the parent is gone, so a SIGKILLed sweep leaves no workers running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    send.send(_run_one(runner, point, point_dir))
    send.close()


def _execute_on_ray(todo, runner, point_dir, workers, ray_address) -> Iterable[dict]:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor=ray needs Ray: pip install 'servesim[ray]' (or pip install ray)") from None
    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:  # an existing cluster: its nodes must have servesim installed
            kwargs = {"address": ray_address}
        else:  # a local instance: workers import servesim from this checkout
            kwargs = {"num_cpus": workers or os.cpu_count(),
                      "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        remote_run = ray.remote(num_cpus=1)(_run_one)
        pending = [remote_run.remote(runner, p, point_dir(p)) for p in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started_here:
            ray.shutdown()


# --- capacity sweeps over Hydra configurations ----------------------------------------------------


def capacity_point_runner(point: SweepPoint, point_dir: Path) -> dict:
    """Run one point's capacity search; writes capacity.json / capacity.md into `point_dir` and returns
    the table row plus its trials. Module-level so process pools and Ray can pickle it."""
    from simulator.capacity import (
        TRIALS_JOURNAL,
        compose_capacity_config,
        record_row,
        run_capacity_search,
        write_capacity_outputs,
    )

    simulation, search = compose_capacity_config(point.overrides)
    run_dir = point_dir / "capacity_run" if search.write_capacity_run else None
    # The point's trials are journaled: a point cut off mid-search resumes from its finished trials.
    record = run_capacity_search(simulation, search, progress=False, capacity_run_dir=run_dir,
                                 trials_journal=point_dir / TRIALS_JOURNAL)
    write_capacity_outputs(record, point_dir)
    row = record_row(record)
    return {**row, "trials": record["trials"]}


def check_points(points: Sequence[SweepPoint], progress: bool = True,
                 fingerprints: dict[str, str] | None = None) -> dict[str, str]:
    """Compose every point and say why it cannot run: {point_id: reason} for the infeasible ones.

    Checks: the config composes and validates (known policy and parameters, TP divides the heads, PP
    the layers), the weights fit, the KV cache holds at least one max_model_len request, and the
    iteration-time predictor can be built (e.g. GPU profiles exist for that model and TP degree).
    Building each distinct predictor here, once, also fills the fitted model's disk cache before
    workers start, so they load it instead of all fitting it at once. Given a `fingerprints` dict, also
    fills it with {point_id: simulator.provenance.point_fingerprint} for every point that composes.
    """
    import dataclasses

    from simulator.capacity import compose_capacity_config
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.run import build_predictor, policy_factory

    reasons = {}
    predictor_errors: dict[tuple, str | None] = {}
    for point in tqdm(points, desc="checking points", unit="point", disable=not progress, leave=False):
        try:
            simulation, search = compose_capacity_config(point.overrides)
            if fingerprints is not None:
                fingerprints[point.point_id] = point_fingerprint(simulation, search)
            policy_factory(simulation.policy, simulation.model.max_model_len, simulation.hardware)
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
    return reasons


def write_report(out_dir: Path, table: pd.DataFrame, trials: pd.DataFrame, title: str,
                 pareto_latency: str = "ttft_s_p99") -> tuple[Path, Path]:
    """report.md and report.html (with figures/ PNGs) for a results table."""
    from plots.cli import capacity_figures
    from simulator.report import sweep_html, sweep_markdown

    out_dir = Path(out_dir)
    figures = capacity_figures(table, trials, out_dir / "figures") if len(table) else []
    relative = [p.relative_to(out_dir) for p in figures]
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_text_atomically(md_path, sweep_markdown(table, title, relative, pareto_latency))
    write_text_atomically(html_path, sweep_html(table, title, relative, pareto_latency))
    return md_path, html_path


def main(argv: list[str] | None = None) -> int:
    """servesim-sweep: run a space file's capacity searches (or rebuild a report)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="servesim-sweep",
        description="Capacity search over every feasible configuration of a space file; resumable. "
                    "See docs/capacity_and_sweeps.md.")
    parser.add_argument("space", nargs="?", type=Path, help="space YAML (e.g. conf/sweep/policies.yaml)")
    parser.add_argument("--out", type=Path, help="results directory (default: sweeps/<space name>)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every point (repeatable), e.g. search=quick")
    parser.add_argument("--executor", choices=["local", "serial", "ray"], default="local",
                        help="local: process pool (default); serial: in this process; ray: a Ray cluster")
    parser.add_argument("--workers", type=int, default=0, help="parallel points (0: all cores)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (e.g. ray://head:10001 or auto); default starts a local Ray")
    parser.add_argument("--retry-failed", action="store_true", help="run points that failed before again")
    parser.add_argument("--dry-run", action="store_true", help="list the points and feasibility, run nothing")
    parser.add_argument("--report", nargs="+", type=Path, metavar="DIR",
                        help="only rebuild report.md/report.html from results under these directories "
                             "(sweep dirs or servesim-capacity -m trees)")
    parser.add_argument("--pareto-latency", default="ttft_s_p99",
                        help="latency column of the Pareto frontier (default ttft_s_p99)")
    args = parser.parse_args(argv)

    if args.report:
        return _report_only(args.report, args.out, args.pareto_latency)
    if args.space is None:
        parser.error("give a space file, or --report DIR")
    try:
        space = load_space(args.space)
        space.base = space.base + list(args.extra)
        points = enumerate_points(space)
        fingerprints: dict[str, str] = {}
        infeasible = check_points(points, fingerprints=fingerprints)
    except ConfigError as e:
        print(f"servesim-sweep: {e}", file=sys.stderr)
        return 2
    out_dir = args.out or Path("sweeps") / space.name
    print(f"{space.name}: {len(points)} points, {len(points) - len(infeasible)} feasible -> {out_dir}")
    if args.dry_run:
        for point in points:
            reason = infeasible.get(point.point_id)
            print(f"  {point.point_id}  {' '.join(point.overrides)}" + (f"\n      infeasible: {reason}" if reason else ""))
        return 0
    try:
        outcome = run_sweep(points, out_dir, capacity_point_runner, infeasible, executor=args.executor,
                            workers=args.workers, ray_address=args.ray_address, retry_failed=args.retry_failed,
                            point_fingerprints=fingerprints)
    except KeyboardInterrupt:
        print(f"servesim-sweep: interrupted; the finished points are recorded in {out_dir / RESULTS_JSONL}. "
              f"Run the same command to resume.", file=sys.stderr)
        return 130
    md_path, html_path = write_report(out_dir, outcome.table, outcome.trials, space.name, args.pareto_latency)
    rerun = f" ({outcome.stale} finished before, rerun: their inputs changed)" if outcome.stale else ""
    print(f"ran {outcome.ran}{rerun}, skipped {outcome.skipped} finished, {outcome.failed} failed, "
          f"{len(infeasible)} infeasible; {outcome.wall_s:.1f} s\n  {out_dir / 'results.parquet'}\n  {md_path}\n  {html_path}")
    return 0


def _unreadable_table(path: Path) -> str | None:
    """Why the parquet file at `path` cannot be read (e.g. truncated by a kill), or None when it can."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as e:  # noqa: BLE001 - any reason is reported the same way, in one line
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    return None


def _report_only(dirs: list[Path], out_dir: Path | None, pareto_latency: str) -> int:
    import sys

    from plots.cli import capacity_rows, find_results, sweep_tables

    found = find_results(dirs)
    for sweep_dir in found["sweeps"]:
        unreadable = _unreadable_table(sweep_dir / "results.parquet")
        if unreadable:
            print(f"servesim-sweep: {sweep_dir / 'results.parquet'} cannot be read ({unreadable}); rerun the "
                  f"sweep into {sweep_dir} to rebuild it from {RESULTS_JSONL}", file=sys.stderr)
            return 2
    tables, trials = [], []
    if found["sweeps"]:
        table, trial_table = sweep_tables(found["sweeps"])
        tables.append(table)
        trials.append(trial_table)
    if found["capacity"]:
        table, trial_table = capacity_rows(found["capacity"])
        tables.append(table.assign(status="ok", error=""))
        trials.append(trial_table)
    if not tables:
        print("servesim-sweep: no results.parquet or capacity.json under " + ", ".join(map(str, dirs)))
        return 1
    out_dir = out_dir or dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = write_report(out_dir, pd.concat(tables, ignore_index=True),
                                      pd.concat(trials, ignore_index=True), out_dir.name, pareto_latency)
    print(f"{md_path}\n{html_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
