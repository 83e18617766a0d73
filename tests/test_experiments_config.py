"""The experiments resolve configuration once: a capacity search composes one SimulationConfig (Hydra ->
typed objects, validated once) and derives each trial's by replacing its workload's rate and request
count; a sweep composes each point once, in the parent, and hands the resolved configuration to the
worker."""
import collections
import sys

import pytest

import simulator.run  # loaded before the counts patch its parses (it loads simulator.disagg.config)
from simulator import config, slo
from simulator.experiments import capacity
from simulator.experiments.capacity import compose_capacity_config, run_capacity_search
from simulator.experiments.sweep import CapacityPointRunner, check_points, parse_space, run_sweep
from simulator.experiments.sweep.space import enumerate_points

TINY = ["model=llama-2-7b", "hardware=h100", "predictor=linear", "workload=synthetic_uniform",
        "workload.max_tokens=1024", "search.num_requests=100", "search.initial_rate_qps=0.5",
        "search.write_capacity_run=false"]


@pytest.fixture
def parses(monkeypatch):
    """Parses by (dataclass name, where it is read from): calls of simulator.config.from_dict (every typed
    config built from a mapping; the source names the file or field, e.g. cluster.disagg.decode.policy),
    and lists of SLO mappings parsed into SLOs (simulator.slo.slos_from_config given any entry that is not
    an SLO yet), wherever a module imported either function."""
    counts = collections.Counter()
    original, original_slos = config.from_dict, slo.slos_from_config

    def counting(cls, values, source):
        counts[cls.__name__, source] += 1
        return original(cls, values, source)

    def counting_slos(entries):
        entries = list(entries)
        if any(not isinstance(entry, slo.SLO) for entry in entries):
            counts["SLO", "slo.slos"] += 1
        return original_slos(entries)

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("simulator", "policies"):
            for attribute, replacement in (("from_dict", counting), ("slos_from_config", counting_slos)):
                if getattr(module, attribute, None) is {"from_dict": original}.get(attribute, original_slos):
                    monkeypatch.setattr(module, attribute, replacement)
    return counts


def compose_and_search(parses, max_trials: int, *overrides: str) -> tuple[int, collections.Counter]:
    parses.clear()
    simulation, search = compose_capacity_config([*TINY, *overrides, f"search.max_trials={max_trials}"])
    record = run_capacity_search(simulation, search, progress=False)
    return len(record["trials"]), collections.Counter(parses)


def test_a_capacity_search_parses_its_configuration_once_whatever_its_trials(parses):
    compose_capacity_config(TINY)  # Hydra initialised outside the counts
    two, parsed_for_two = compose_and_search(parses, 2)
    four, parsed_for_four = compose_and_search(parses, 4)
    assert (two, four) == (2, 4)
    # Composition builds each config group once (cluster, policy, workload, slo and its objectives, linear
    # predictor, and model, hardware, engine from their files); the trials add nothing.
    assert parsed_for_two == parsed_for_four
    assert len(parsed_for_two) == 9
    assert all(count == 1 for count in parsed_for_two.values())
    assert parsed_for_two["SLO", "slo.slos"] == 1


def test_a_disaggregated_capacity_search_parses_its_pools_once_whatever_its_trials(parses):
    compose_capacity_config(TINY)
    two, parsed_for_two = compose_and_search(parses, 2, "cluster=disagg_1p1d", "cluster.disagg.decode.hardware=h200")
    four, parsed_for_four = compose_and_search(parses, 4, "cluster=disagg_1p1d", "cluster.disagg.decode.hardware=h200")
    assert (two, four) == (2, 4)
    # The pools, their policies and GPU, the link: read once, when the configuration is resolved.
    assert parsed_for_two == parsed_for_four
    assert all(count == 1 for count in parsed_for_two.values())
    pool_parts = {("PoolConfig", "cluster.disagg.prefill"), ("PoolConfig", "cluster.disagg.decode"),
                  ("PolicyConfig", "cluster.disagg.prefill.policy"), ("PolicyConfig", "cluster.disagg.decode.policy"),
                  ("LinkConfig", "cluster.disagg.link"), ("DisaggConfig", "cluster.disagg")}
    assert pool_parts <= set(parsed_for_two)
    assert sum(kind == "HardwareConfig" for kind, _ in parsed_for_two) == 2  # h100 (top level) and h200


def test_a_disaggregated_search_runs_its_trials_on_the_resolved_pools(monkeypatch):
    from simulator.disagg.config import DisaggConfig

    simulation, search = compose_capacity_config([*TINY, "cluster=disagg_1p1d", "search.max_trials=3",
                                                  "cluster.disagg.decode.num_replicas=2"])
    assert isinstance(simulation.cluster.disagg, DisaggConfig)
    seen = []
    original = simulator.run.run_simulation

    def recording(cfg, *args, **kwargs):
        result = original(cfg, *args, **kwargs)
        seen.append((cfg, result.summary["setup"]))
        return result

    monkeypatch.setattr(simulator.run, "run_simulation", recording)
    record = run_capacity_search(simulation, search, progress=False)
    assert len(seen) == len(record["trials"]) == 3
    for cfg, setup in seen:  # each trial replaced the workload only, and ran both pools as resolved
        assert cfg.cluster.disagg is simulation.cluster.disagg
        assert setup["policy"] == "disagg(vllm/sarathi)" and setup["disagg"]["decode"]["num_replicas"] == 2
    # GPUs, per-GPU capacity and cost count every pool's GPUs: one prefill and two decode replicas
    assert record["num_gpus"] == simulation.cluster.num_gpus == 3
    assert record["qps_per_gpu"] == record["capacity_qps"] / 3


def test_the_trials_derive_from_the_resolved_configuration(monkeypatch):
    simulation, search = compose_capacity_config([*TINY, "search.max_trials=3"])
    seen = []
    original = simulator.run.run_simulation

    def recording(cfg, *args, **kwargs):
        seen.append(cfg)
        return original(cfg, *args, **kwargs)

    monkeypatch.setattr(simulator.run, "run_simulation", recording)
    record = run_capacity_search(simulation, search, progress=False)
    assert len(seen) == len(record["trials"]) == 3
    assert [cfg.workload.rate_qps for cfg in seen] == [t["rate_qps"] for t in record["trials"]]
    for cfg in seen:  # the very objects of the resolved configuration, only the workload replaced
        assert cfg.workload.num_requests == search.num_requests
        assert all(getattr(cfg, group) is getattr(simulation, group)
                   for group in ("model", "hardware", "engine", "cluster", "policy", "slo"))


def test_a_sweep_composes_each_point_once(tmp_path, monkeypatch):
    space = parse_space({"name": "once", "base": [*TINY, "search.max_trials=2"],
                         "grid": {"policy": ["vllm", "sarathi"]}})
    points = enumerate_points(space)
    composed = []
    original = capacity.compose_capacity_config

    def counting(overrides):
        composed.append(tuple(overrides))
        return original(overrides)

    monkeypatch.setattr(capacity, "compose_capacity_config", counting)
    resolved: dict = {}
    assert check_points(points, progress=False, resolved=resolved) == {}
    assert len(composed) == len(points) and set(resolved) == {p.point_id for p in points}
    outcome = run_sweep(points, tmp_path, CapacityPointRunner(resolved), executor="serial", progress=False)
    assert outcome.failed == 0 and outcome.ran == len(points)
    assert len(composed) == len(points)  # the runs composed nothing again
