"""The experiments resolve configuration once: a capacity search composes one SimulationConfig (Hydra ->
typed objects, validated once) and derives each trial's by replacing its workload's rate and request
count; a sweep composes each point once, in the parent, and hands the resolved configuration to the
worker."""
import collections
import sys

import pytest

from simulator import config
from simulator.experiments import capacity
from simulator.experiments.capacity import compose_capacity_config, run_capacity_search
from simulator.experiments.sweep import CapacityPointRunner, check_points, parse_space, run_sweep
from simulator.experiments.sweep.space import enumerate_points

TINY = ["model=llama-2-7b", "hardware=h100", "predictor=linear", "workload=synthetic_uniform",
        "workload.max_tokens=1024", "search.num_requests=100", "search.initial_rate_qps=0.5",
        "search.write_capacity_run=false"]


@pytest.fixture
def parses(monkeypatch):
    """Calls of simulator.config.from_dict (every typed config built from a mapping) by dataclass name,
    wherever a module imported the function."""
    counts = collections.Counter()
    original = config.from_dict

    def counting(cls, values, source):
        counts[cls.__name__] += 1
        return original(cls, values, source)

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("simulator", "policies") and getattr(module, "from_dict", None) is original:
            monkeypatch.setattr(module, "from_dict", counting)
    return counts


def compose_and_search(parses, max_trials: int) -> tuple[int, collections.Counter]:
    parses.clear()
    simulation, search = compose_capacity_config([*TINY, f"search.max_trials={max_trials}"])
    record = run_capacity_search(simulation, search, progress=False)
    return len(record["trials"]), collections.Counter(parses)


def test_a_capacity_search_parses_its_configuration_once_whatever_its_trials(parses):
    compose_capacity_config(TINY)  # Hydra initialised outside the counts
    two, parsed_for_two = compose_and_search(parses, 2)
    four, parsed_for_four = compose_and_search(parses, 4)
    assert (two, four) == (2, 4)
    # Composition builds each config group once (cluster, policy, workload, slo, linear predictor, and
    # model, hardware, engine from their files); the trials add nothing.
    assert parsed_for_two == parsed_for_four
    assert 0 < sum(parsed_for_two.values()) <= 8
    assert all(count == 1 for count in parsed_for_two.values())


def test_the_trials_derive_from_the_resolved_configuration(monkeypatch):
    import simulator.run

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
