"""Running a sweep's points: each point not already finished (same fingerprint) runs once, serially, in a
process of its own or on a Ray cluster; each record is appended to results.jsonl as it arrives."""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait as wait_for_connections
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from simulator.config import ConfigError
from simulator.experiments.sweep.results import (
    DONE_STATUSES,
    RESULTS_JSONL,
    append_record,
    read_records,
    write_tables,
)
from simulator.experiments.sweep.space import SweepPoint
from simulator.paths import REPO_ROOT
from simulator.provenance import check_fingerprint

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


