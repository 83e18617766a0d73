"""Sweep enumeration, feasibility filter, resume, failure recording and the process-pool executor."""
import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from simulator.config import ConfigError, load_hardware_config, load_model_config
from simulator.experiments.sweep import (
    RESULTS_JSONL,
    enumerate_points,
    infeasibility_reason,
    parse_space,
    read_records,
    run_sweep,
)

SPACE = {
    "name": "t",
    "base": ["model=mistral-7b"],
    "grid": {"search": ["strict", "relaxed"]},
    "variants": [
        {"policy": ["orca"], "policy.max_batch_size": [16]},
        {"policy": ["sarathi"], "policy.chunk_size": [512, 2048]},
    ],
}


def fake_runner(point, point_dir):
    """Capacity = chunk size / 100 (or 3 without one); a point with chunk 2048 and relaxed SLOs fails."""
    axes = dict(point.axes)
    (point_dir / "ran.txt").write_text("yes")
    if axes.get("policy.chunk_size") == "2048" and axes["search"] == "relaxed":
        raise RuntimeError("simulated crash")
    capacity = int(axes.get("policy.chunk_size", 300)) / 100
    return {"capacity_qps": capacity, "metrics": {"ttft_s_p99": 1 / capacity},
            "trials": [{"rate_qps": 1.0, "feasible": True, "metrics": {"ttft_s_p99": 0.5}, "violations": []}]}


def test_space_enumerates_grid_times_union_of_variants():
    points = enumerate_points(parse_space(SPACE))
    assert len(points) == 2 * (1 + 2)
    assert points[0].overrides == ("model=mistral-7b", "search=strict", "policy=orca", "policy.max_batch_size=16")
    assert len({p.point_id for p in points}) == 6


def test_point_id_does_not_depend_on_axis_order():
    a = enumerate_points(parse_space({"grid": {"x": [1], "y": [2]}}))[0]
    b = enumerate_points(parse_space({"grid": {"y": [2], "x": [1]}}))[0]
    assert a.point_id == b.point_id


def test_bad_space_names_the_key():
    with pytest.raises(ConfigError, match="unknown key"):
        parse_space({"grids": {}}, source="s.yaml")
    with pytest.raises(ConfigError, match=r"variants\[0\].policy has no values"):
        parse_space({"variants": [{"policy": []}]}, source="s.yaml")
    with pytest.raises(ConfigError, match="base"):
        parse_space({"base": ["model"]}, source="s.yaml")


def test_feasibility_filter():
    mistral, yi, h100 = load_model_config("mistral-7b"), load_model_config("yi-34b"), load_hardware_config("h100")
    a100 = load_hardware_config("a100")

    def kv_tokens(model, hardware, tp, pp):  # 90% of memory minus weights, as a plain KV sizing
        free = 0.9 * hardware.memory_gib * 2**30 - model.weight_bytes_per_gpu(tp, pp)
        return int(free // model.kv_bytes_per_token(tp, pp))

    assert infeasibility_reason(mistral, h100, 1, 1, kv_tokens, 4096) is None
    assert "does not divide" in infeasibility_reason(mistral, h100, 3, 1, kv_tokens, 4096)  # 32 heads
    assert "pp=7" in infeasibility_reason(mistral, h100, 1, 7, kv_tokens, 4096)  # 32 layers
    small = dataclasses.replace(h100, memory_gib=14.0)  # Mistral's 13.5 GiB of weights fit, no KV does
    assert "KV cache holds 0 tokens" in infeasibility_reason(mistral, small, 1, 1, kv_tokens, 4096)
    assert infeasibility_reason(yi, a100, 1, 1, kv_tokens, 4096) is None  # 64 GiB weights, ~35k KV tokens
    assert "fewer than one 40000-token" in infeasibility_reason(yi, a100, 1, 1, kv_tokens, 40000)
    assert infeasibility_reason(yi, h100, 2, 1, kv_tokens, 4096) is None
    llama70 = load_model_config("llama-2-70b")
    assert "weights need" in infeasibility_reason(llama70, h100, 1, 1, kv_tokens, 4096)


def test_sweep_records_failures_then_resumes_without_rerunning(tmp_path):
    points = enumerate_points(parse_space(SPACE))
    first = run_sweep(points[:4], tmp_path, fake_runner, executor="serial", progress=False)
    assert (first.ran, first.skipped, first.failed) == (4, 0, 0)

    # Interrupted mid-write: a torn last line must be ignored, not crash the resume.
    with (tmp_path / RESULTS_JSONL).open("a") as f:
        f.write('{"point_id": "abc", "sta')
    second = run_sweep(points, tmp_path, fake_runner, executor="serial", progress=False)
    assert (second.ran, second.skipped, second.failed) == (2, 4, 1)

    table = pd.read_parquet(tmp_path / "results.parquet")
    assert len(table) == 6
    failed = table[table["status"] == "error"]
    assert len(failed) == 1 and "simulated crash" in failed["error"].iloc[0]
    assert failed["search"].iloc[0] == "relaxed" and failed["policy.chunk_size"].iloc[0] == 2048
    ok = table[table["status"] == "ok"].set_index("point_id")
    assert sorted(ok["capacity_qps"]) == [3.0, 3.0, 5.12, 5.12, 20.48]
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    assert len(trials) == 5 and trials["rate_qps"].eq(1.0).all()

    # A third call runs nothing; retry_failed re-runs only the failed point.
    third = run_sweep(points, tmp_path, fake_runner, executor="serial", progress=False)
    assert (third.ran, third.skipped) == (0, 6)
    fourth = run_sweep(points, tmp_path, fake_runner, executor="serial", retry_failed=True, progress=False)
    assert (fourth.ran, fourth.failed) == (1, 1)


def test_a_sweep_never_resumes_points_computed_by_other_code_or_profiles(tmp_path):
    from simulator.provenance import StaleResultsError as StaleSweepError

    points = enumerate_points(parse_space(SPACE))
    before = {"code": "aaaa", "profiles": "1111"}
    run_sweep(points[:2], tmp_path, fake_runner, executor="serial", progress=False, fingerprint=before)
    # Same code and profiles: resumes (skips the two finished points).
    again = run_sweep(points[:3], tmp_path, fake_runner, executor="serial", progress=False, fingerprint=before)
    assert (again.ran, again.skipped) == (1, 2)
    # Re-profiled: refused, naming what changed; nothing recorded is touched.
    lines = (tmp_path / RESULTS_JSONL).read_text()
    with pytest.raises(StaleSweepError, match="3 finished points were computed with other profiles"):
        run_sweep(points, tmp_path, fake_runner, executor="serial", progress=False,
                  fingerprint={"code": "aaaa", "profiles": "2222"})
    assert (tmp_path / RESULTS_JSONL).read_text() == lines
    # A fresh directory takes any fingerprint.
    fresh = run_sweep(points[:1], tmp_path / "new", fake_runner, executor="serial", progress=False,
                      fingerprint={"code": "bbbb", "profiles": "2222"})
    assert fresh.ran == 1


def test_results_fingerprint_follows_code_and_profiles(tmp_path):
    from simulator.provenance import results_fingerprint

    (tmp_path / "simulator").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "simulator" / "a.py").write_text("x = 1\n")
    profiles = tmp_path / "profiles"
    (profiles / "h100").mkdir(parents=True)
    (profiles / "h100" / "ops.csv").write_text("op,ms\n")
    first = results_fingerprint(tmp_path, profiles)
    assert results_fingerprint(tmp_path, profiles) == first
    (profiles / "h100" / "ops.csv").write_text("op,ms\nqkv,1.0\n")
    second = results_fingerprint(tmp_path, profiles)
    assert second["code"] == first["code"] and second["profiles"] != first["profiles"]
    (tmp_path / "policies" / "b.py").write_text("y = 2\n")
    assert results_fingerprint(tmp_path, profiles)["code"] != second["code"]


def test_infeasible_points_are_recorded_not_run(tmp_path):
    points = enumerate_points(parse_space(SPACE))[:2]
    outcome = run_sweep(points, tmp_path, fake_runner, infeasible={points[1].point_id: "too big"},
                        executor="serial", progress=False)
    assert outcome.ran == 1
    records = read_records(tmp_path)
    assert records[points[1].point_id]["status"] == "infeasible_config"
    assert not (tmp_path / "points" / points[1].point_id / "ran.txt").exists()


def test_process_pool_gives_the_same_table_as_serial(tmp_path):
    points = enumerate_points(parse_space(SPACE))
    run_sweep(points, tmp_path / "serial", fake_runner, executor="serial", progress=False)
    run_sweep(points, tmp_path / "pool", fake_runner, executor="local", workers=2, progress=False)
    columns = ["point_id", "status", "capacity_qps"]
    serial = pd.read_parquet(tmp_path / "serial" / "results.parquet")[columns].sort_values("point_id")
    pool = pd.read_parquet(tmp_path / "pool" / "results.parquet")[columns].sort_values("point_id")
    pd.testing.assert_frame_equal(serial.reset_index(drop=True), pool.reset_index(drop=True))
    assert json.loads((tmp_path / "pool" / RESULTS_JSONL).read_text().splitlines()[0])["point_wall_s"] >= 0


def test_ray_executor_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray")
    # Started here (not by run_sweep) so workers can import this test module, as they would import
    # an installed runner on a real cluster; run_sweep then uses the running instance.
    tests_dir = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    try:
        points = enumerate_points(parse_space(SPACE))
        outcome = run_sweep(points, tmp_path, fake_runner, executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert (outcome.ran, outcome.failed) == (6, 1)
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(table.loc[table["status"] == "ok", "capacity_qps"]) == [3.0, 3.0, 5.12, 5.12, 20.48]


def test_results_tables_are_replaced_whole_never_torn(tmp_path, monkeypatch):
    points = enumerate_points(parse_space(SPACE))
    run_sweep(points[:2], tmp_path, fake_runner, executor="serial", progress=False)
    before = (tmp_path / "results.parquet").read_bytes()

    def killed_mid_write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(points[:3], tmp_path, fake_runner, executor="serial", progress=False)
    assert (tmp_path / "results.parquet").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_on_a_truncated_results_file_is_a_one_line_error_naming_it(tmp_path, capsys):
    from simulator.experiments.sweep.cli import main

    points = enumerate_points(parse_space(SPACE))
    run_sweep(points[:2], tmp_path, fake_runner, executor="serial", progress=False)
    path = tmp_path / "results.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["--report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


def crashing_runner(point, point_dir):
    """fake_runner, except that the chunk-512 points' worker is SIGKILLed (as the OOM killer would)."""
    import os
    import signal

    if dict(point.axes).get("policy.chunk_size") == "512":
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_runner(point, point_dir)


def test_a_killed_worker_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    points = enumerate_points(parse_space(SPACE))
    outcome = run_sweep(points, tmp_path, crashing_runner, executor="local", workers=2, progress=False)
    records = read_records(tmp_path)
    assert (outcome.ran, len(records)) == (6, 6)
    killed = [r for r in records.values() if r["axes"].get("policy.chunk_size") == "512"]
    assert len(killed) == 2 and all(r["status"] == "error" and "SIGKILL" in r["error"] for r in killed)
    assert sorted(r["capacity_qps"] for r in records.values() if r["status"] == "ok") == [3.0, 3.0, 20.48]


def interrupting_runner(point, point_dir):
    """The orca point finishes at once; the other one, once orca's record is in, sends SIGINT to the
    sweep (as Ctrl-C would) and would then compute for a minute."""
    import os
    import signal
    import time

    if dict(point.axes)["policy"] == "orca":
        return fake_runner(point, point_dir)
    results = point_dir.parent.parent / RESULTS_JSONL
    while not results.exists():
        time.sleep(0.05)
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(60)
    return fake_runner(point, point_dir)


def sleeping_runner(point, point_dir):
    """Write this worker's pid, then compute for a minute."""
    import os
    import time

    (point_dir / "pid.txt").write_text(str(os.getpid()))
    time.sleep(60)
    return fake_runner(point, point_dir)


def _sweep_in_subprocess(tmp_path, runner: str, indices: list[int]):
    import os
    import subprocess
    import sys

    tests_dir = Path(__file__).parent
    script = (f"from test_sweep import SPACE, {runner}\n"
              "from simulator.experiments.sweep import enumerate_points, parse_space, run_sweep\n"
              f"points = [enumerate_points(parse_space(SPACE))[i] for i in {indices}]\n"
              f"run_sweep(points, {str(tmp_path)!r}, {runner}, executor='local', workers=2, progress=False)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir.parent), str(tests_dir)])}
    return subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_records_the_finished_points_and_stops_the_others(tmp_path):
    import time

    start = time.monotonic()
    sweep = _sweep_in_subprocess(tmp_path, "interrupting_runner", [0, 2])
    _, stderr = sweep.communicate(timeout=50)
    assert sweep.returncode != 0 and "KeyboardInterrupt" in stderr
    assert time.monotonic() - start < 50  # the interrupted point was not waited for
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert list(table["policy"]) == ["orca"] and list(table["status"]) == ["ok"]


def test_workers_exit_when_the_sweep_is_killed(tmp_path):
    import os
    import signal
    import time

    sweep = _sweep_in_subprocess(tmp_path, "sleeping_runner", [0, 1])
    pid_files = lambda: list(tmp_path.glob("points/*/pid.txt"))
    deadline = time.monotonic() + 40
    while len(pid_files()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    worker_pids = [int(p.read_text()) for p in pid_files()]
    assert len(worker_pids) == 2
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()

    def alive(pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state != "Z"

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [pid for pid in worker_pids if alive(pid)]
    for pid in leftover:  # leave nothing running even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not leftover


def test_a_point_whose_inputs_changed_runs_again_the_others_are_kept(tmp_path):
    points = enumerate_points(parse_space(SPACE))[:3]
    fingerprints = {p.point_id: "aaaa" for p in points}
    first = run_sweep(points, tmp_path, fake_runner, executor="serial", progress=False,
                      point_fingerprints=fingerprints)
    assert (first.ran, first.stale) == (3, 0)
    assert {r["fingerprint"] for r in read_records(tmp_path).values()} == {"aaaa"}
    changed = {**fingerprints, points[1].point_id: "bbbb"}  # e.g. its SLO file was edited
    again = run_sweep(points, tmp_path, fake_runner, executor="serial", progress=False,
                      point_fingerprints=changed)
    assert (again.ran, again.stale, again.skipped) == (1, 1, 2)
    assert read_records(tmp_path)[points[1].point_id]["fingerprint"] == "bbbb"
    # Records from before fingerprints carry none: they are recomputed rather than trusted.
    legacy = run_sweep(points, tmp_path / "legacy", fake_runner, executor="serial", progress=False)
    assert legacy.ran == 3
    resumed = run_sweep(points, tmp_path / "legacy", fake_runner, executor="serial", progress=False,
                        point_fingerprints=fingerprints)
    assert (resumed.ran, resumed.stale) == (3, 3)


def test_point_fingerprint_follows_config_trace_own_policy_and_code_only(tmp_path):
    import shutil

    from simulator.experiments.capacity import compose_capacity_config
    from simulator.paths import REPO_ROOT
    from simulator.provenance import point_fingerprint

    simulation, search = compose_capacity_config(["policy=orca", "slo=strict", "predictor=linear"])
    for package in ("simulator", "policies"):
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    trace = tmp_path / "trace.csv"
    shutil.copy(REPO_ROOT / "data" / "traces" / "splitwise_conv.csv", trace)
    simulation = dataclasses.replace(simulation, workload=dataclasses.replace(simulation.workload, trace=str(trace)))
    fingerprint = lambda sim=simulation: point_fingerprint(sim, search, repo_root=tmp_path)
    first = fingerprint()
    assert fingerprint() == first

    # The SLO file's TBT bound tightened 0.1 -> 0.03 s: another configuration, another fingerprint.
    slos = [dataclasses.replace(s, max_s=0.03) if s.metric == "tbt_s" else s for s in simulation.slo.slos]
    tighter = dataclasses.replace(simulation, slo=dataclasses.replace(simulation.slo, slos=slos))
    assert fingerprint(tighter) != first
    # Another policy's module edited, or a new policy file added: this point is unaffected.
    (tmp_path / "policies" / "sarathi.py").write_text("# edited\n")
    (tmp_path / "policies" / "my_new_policy.py").write_text("# a new policy\n")
    assert fingerprint() == first
    # Its own policy's code, the simulator's code, or the trace's rows changed: it is not.
    (tmp_path / "policies" / "orca.py").write_text("from policies.helpers import shared\n")
    own_policy = fingerprint()
    assert own_policy != first
    # ... and so does a policies module it imports.
    (tmp_path / "policies" / "helpers.py").write_text("shared = 1\n")
    helper = fingerprint()
    assert helper != own_policy
    (tmp_path / "policies" / "helpers.py").write_text("shared = 2\n")
    assert fingerprint() != helper
    own_policy = fingerprint()
    (tmp_path / "simulator" / "replica.py").write_text("# edited\n")
    code = fingerprint()
    assert code != own_policy
    trace.write_text(trace.read_text() + trace.read_text().splitlines()[-1] + "\n")
    assert fingerprint() != code
