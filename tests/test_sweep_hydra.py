"""Sweeps over real Hydra configs: composition with the search group, feasibility of composed points,
and `servesim-sweep` end to end on a tiny space (linear predictor, 150 requests per trial)."""
import json

import pandas as pd
import pytest
import yaml

from simulator.experiments.capacity import compose_capacity_config
from simulator.experiments.sweep import check_points, enumerate_points, parse_space
from simulator.experiments.sweep.cli import main

TINY = ["predictor=linear", "workload=synthetic_uniform", "workload.num_requests=150", "search=quick",
        "search.num_requests=150", "search.tolerance=0.1", "search.initial_rate_qps=4"]


def test_compose_adds_the_search_group_and_takes_slos_from_the_slo_group():
    simulation, search = compose_capacity_config(["policy=vllm", "slo=strict", "search=quick",
                                                  "search.max_trials=7"])
    assert simulation.policy.name == "vllm"
    assert (search.num_requests, search.tolerance, search.max_trials) == (1000, 0.05, 7)
    assert next((s.metric, s.max_s) for s in search.slos) == ("tbt_s", 0.1)
    _, default = compose_capacity_config([])
    assert (default.num_requests, default.tolerance) == (2048, 0.02)


def test_list_valued_slo_override_from_a_space_file():
    space = parse_space({"grid": {"slo.slos": ["[{metric:tbt_s,percentile:99,max_s:0.2}]"]}})
    _simulation, search = compose_capacity_config(enumerate_points(space)[0].overrides)
    assert len(search.slos) == 1 and search.slos[0].max_s == 0.2


def test_composed_points_are_checked_for_feasibility():
    space = parse_space({"base": ["model=llama-3-70b", "hardware=h100", "predictor=linear"],
                         "grid": {"cluster.tp": [1, 3, 4]},
                         "variants": [{"policy": ["sarathi"]}, {"policy": ["vllm"], "policy.chunk_size": [512]}]})
    points = enumerate_points(space)
    reasons = check_points(points, progress=False)
    by_overrides = {" ".join(p.overrides[3:]): reasons.get(p.point_id) for p in points}
    assert "weights need" in by_overrides["cluster.tp=1 policy=sarathi"]
    assert "does not divide" in by_overrides["cluster.tp=3 policy=sarathi"]
    assert by_overrides["cluster.tp=4 policy=sarathi"] is None
    assert "chunk_size" in by_overrides["cluster.tp=4 policy=vllm policy.chunk_size=512"]  # vLLM has no chunks


def test_servesim_sweep_end_to_end_and_resume(tmp_path, capsys):
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump({
        "name": "tiny", "base": ["model=llama-2-7b", "hardware=h100", *TINY],
        "grid": {"slo": ["strict"]},
        "variants": [{"policy": ["orca"]}, {"policy": ["sarathi"], "policy.chunk_size": [256, 1024]},
                     {"policy": ["sarathi"], "cluster.tp": [3]}],
    }))
    out = tmp_path / "out"
    assert main([str(space_path), "--out", str(out), "--executor", "serial"]) == 0
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table["status"]) == ["infeasible_config", "ok", "ok", "ok"]
    ok = table[table["status"] == "ok"]
    assert (ok["capacity_qps"] > 0).all() and set(ok["capacity_status"]) == {"converged"}
    assert set(ok["chunk_size"].dropna()) == {256, 1024}
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == ok["num_trials"].sum()
    for point_id in ok["point_id"]:
        record = json.loads((out / "points" / point_id / "capacity.json").read_text())
        assert record["capacity_qps"] == ok.set_index("point_id").loc[point_id, "capacity_qps"]
    report = (out / "report.md").read_text()
    assert "## Best configuration per SLO set" in report and "does not divide" in report
    assert (out / "report.html").exists() and (out / "figures" / "capacity_by_policy.png").exists()

    capsys.readouterr()
    assert main([str(space_path), "--out", str(out), "--executor", "serial"]) == 0
    assert "ran 0, skipped 4 finished" in capsys.readouterr().out


def test_bad_space_file_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {policy: []}\n")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "grid.policy has no values" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


def test_each_slo_name_has_one_definition_and_the_sarathi_sweeps_use_the_shipped_sets():
    """`strict` in the Sarathi-Serve table once meant the sweep's inline SLOs, not conf/slo/strict.yaml."""
    from simulator.paths import CONF_DIR

    names = {path.stem: yaml.safe_load(path.read_text())["name"] for path in (CONF_DIR / "slo").glob("*.yaml")}
    assert all(stem == name for stem, name in names.items())  # `slo=<name>` finds the set its results name
    for sweep in ("sarathi_mistral7b", "sarathi_yi34b"):
        space = parse_space(yaml.safe_load((CONF_DIR / "sweep" / f"{sweep}.yaml").read_text()))
        points = enumerate_points(space)
        assert not any(o.startswith(("slo.name=", "slo.slos=")) for p in points for o in p.overrides)
        chosen = {o.split("=", 1)[1] for p in points for o in p.overrides if o.startswith("slo=")}
        assert chosen == {f"sarathi_strict_{sweep[8:]}", f"sarathi_relaxed_{sweep[8:]}"} and chosen <= set(names)


README_CAPACITY = ("model=mistral-7b engine=vllm_v0 policy=sarathi policy.chunk_size=512 workload=arxiv_poisson "
                   "slo=sarathi_strict_mistral7b")


def test_the_readme_capacity_command_is_the_sarathi_tables_point():
    """The README's servesim-capacity example composes exactly the sweep point behind the Sarathi-Serve
    table's Mistral-7B / arXiv / strict / Sarathi-Serve cell, so it reproduces that number."""
    from simulator.paths import CONF_DIR, REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    assert f"servesim-capacity {README_CAPACITY}" in readme
    space = parse_space(yaml.safe_load((CONF_DIR / "sweep" / "sarathi_mistral7b.yaml").read_text()))
    [point] = [p for p in enumerate_points(space) if {"workload=arxiv_poisson", "slo=sarathi_strict_mistral7b",
                                                       "policy=sarathi", "policy.chunk_size=512"} <= set(p.overrides)]
    assert compose_capacity_config(README_CAPACITY.split()) == compose_capacity_config(point.overrides)
    assert compose_capacity_config(README_CAPACITY.split()) != compose_capacity_config(
        README_CAPACITY.replace("sarathi_strict_mistral7b", "strict").split())
