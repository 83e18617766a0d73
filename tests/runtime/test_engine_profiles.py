"""Engine profiles in the runtime model (simulator/engine.py, simulator/runtime/predictor.py): how a batch's
attention is launched, which batches are graph-replayed and padded, the launch floor of batches the host
launches, and the host terms (once, added or overlapped)."""
import dataclasses

import numpy as np
import pytest
from synthetic import TINY_MODEL

from simulator.config import ConfigError
from simulator.engine import EngineProfile, load_engine_profile, padded_capture_size, vllm_capture_sizes
from simulator.runtime.cpu_overhead import launch_bound_s

FLOOR_MS = 50.0  # per layer: far above any synthetic batch's GPU time per layer, so the floor binds
# A hard maximum (a huge exponent) keeps the expected values exact; the soft one is tested on its own.
FLOORED = EngineProfile(name="floored", attention_launch="fused_varlen", cuda_graphs="decode_only",
                        graph_max_decode_batch=8, graph_max_tokens=0, cpu_overhead_ms=1.0,
                        cpu_overhead_per_sequence_ms=0.1, eager_launch_ms_per_layer=FLOOR_MS,
                        eager_overlap_exponent=200.0)
NO_HOST = {"cpu_overhead_ms": 0.0, "cpu_overhead_per_sequence_ms": 0.0, "eager_launch_ms_per_layer": 0.0}


def kernels(make_predictor, launch="fused_varlen", **fields):
    """A predictor of kernel times only (no graphs, no host terms) for one attention launch mode."""
    return make_predictor(cpu_overhead_s=None, engine=EngineProfile(name="k", attention_launch=launch, cuda_graphs="none", **fields))


# ---------------------------------------------------------------- attention launch


def test_split_mixed_batch_costs_the_prefill_launch_plus_the_decode_launch_plus_the_gap(make_predictor):
    fused = kernels(make_predictor)
    split = kernels(make_predictor, "split", split_launch_gap_us=7.0)
    q, kv = np.array([300, 1, 1]), np.array([100, 900, 2000])
    prefill_alone = fused.attention.batch_ms(np.array([300]), np.array([100]))[0]
    decodes_alone = fused.attention.batch_ms(np.array([1, 1]), np.array([900, 2000]))[0]
    assert split.attention.split_batch_ms(q, kv, 0.007)[0] == pytest.approx(prefill_alone + decodes_alone + 0.007)
    layers, scale = TINY_MODEL.num_layers, split.fitted.calibration_scale
    difference_s = split.stage_times_s(q, kv)[0] - fused.stage_times_s(q, kv)[0]
    fused_launch = fused.attention.batch_ms(q, kv)[0]
    assert difference_s * 1e3 == pytest.approx((prefill_alone + decodes_alone + 0.007 - fused_launch) * layers * scale)
    # The breakdown names each launch: the chunks' and the decodes' (with the gap).
    parts = split.breakdown(q, kv).breakdown_ms
    assert parts["attention_prefill"] == pytest.approx(prefill_alone * layers * scale)
    assert parts["attention_decode"] == pytest.approx((decodes_alone + 0.007) * layers * scale)


def test_split_and_fused_agree_where_a_batch_has_one_kind(make_predictor):
    fused, split = kernels(make_predictor), kernels(make_predictor, "split", split_launch_gap_us=7.0)
    for q, kv in (([1, 1, 1], [10, 500, 3000]), ([400, 90], [0, 1000])):
        assert split.stage_times_s(q, kv)[0] == fused.stage_times_s(q, kv)[0]  # one launch: no gap either


def test_packed_gqa_stops_naming_the_field_and_the_missing_table(make_predictor):
    with pytest.raises(ConfigError, match=r"attention_launch=packed_gqa needs .*attention_packed_gqa\.csv"):
        kernels(make_predictor, "packed_gqa")


def test_unknown_engine_or_field_value_stops_naming_it():
    with pytest.raises(ConfigError, match="unknown engine 'vllm_v9'.*known: .*vllm_v1"):
        load_engine_profile("vllm_v9")
    with pytest.raises(ConfigError, match="attention_launch='fused'"):
        EngineProfile(name="x", attention_launch="fused")
    with pytest.raises(ConfigError, match="cuda_graphs='full'"):
        EngineProfile(name="x", cuda_graphs="full")
    with pytest.raises(ConfigError, match="cpu_overhead_ms=-1"):
        EngineProfile(name="x", cpu_overhead_ms=-1)
    with pytest.raises(ConfigError, match="unknown field"):
        load_engine_profile({"name": "x", "graphs": "none"})


def test_every_shipped_profile_loads_and_says_what_it_follows():
    for name in ("vllm_v1", "vllm_v0", "sglang", "servesim_execute", "servesim_execute_piecewise"):
        engine = load_engine_profile(name)
        assert engine.name == name and engine.follows and engine.source == f"conf/engine/{name}.yaml"


# ---------------------------------------------------------------- CUDA graphs and padding


def test_capture_sizes_as_vllm_chooses_them():
    sizes = vllm_capture_sizes(512)
    assert sizes[:5] == (1, 2, 4, 8, 16) and 248 in sizes and 256 in sizes and sizes[-1] == 512
    assert all(b - a == 16 for a, b in zip(sizes[sizes.index(256):], sizes[sizes.index(256) + 1:]))
    assert [padded_capture_size(n, 512) for n in (1, 3, 5, 9, 249, 257, 500, 512, 513)] == \
        [1, 4, 8, 16, 256, 272, 512, 512, 513]


def test_launch_paths():
    engine = load_engine_profile("vllm_v1")  # full decode graphs and piecewise graphs up to 512
    assert engine.launch_path(300, 300) == "graph" and engine.padded_tokens(300, 300) == 304
    assert engine.launch_path(130, 4) == "piecewise" and engine.padded_tokens(130, 4) == 136
    assert engine.launch_path(600, 4) == "eager" and engine.padded_tokens(600, 4) == 600
    v0 = load_engine_profile("vllm_v0")  # decode graphs up to 256 only
    assert v0.launch_path(5, 5) == "graph" and v0.padded_tokens(5, 5) == 8
    assert v0.launch_path(257, 257) == "eager" and v0.launch_path(6, 5) == "eager"


def test_piecewise_batches_run_their_token_wise_kernels_at_the_capture_size(make_predictor):
    piecewise = make_predictor(cpu_overhead_s=None, engine=EngineProfile(name="p", cuda_graphs="piecewise", graph_max_decode_batch=0,
                                                    graph_max_tokens=512, **NO_HOST))
    none = kernels(make_predictor)
    q, kv = np.array([129, 1]), np.array([0, 50])  # 130 tokens run as 136
    attention_s = none.attention.batch_ms(q, kv)[0] * none._stage_attention[0]
    expected = none._stage_tokens[0].at(136) + none._stage_seqs[0].at(2) + attention_s
    assert piecewise.stage_times_s(q, kv)[0] == pytest.approx(expected, rel=1e-12)
    assert none.stage_times_s(q, kv)[0] < expected  # the padding costs something on the synthetic GPU
    big_q = np.array([600])  # past the capture limit: unpadded, eager
    assert piecewise.stage_times_s(big_q, np.array([0]))[0] == none.stage_times_s(big_q, np.array([0]))[0]


# ---------------------------------------------------------------- host terms


def test_floor_binds_only_for_batches_the_host_launches(make_predictor):
    plain = kernels(make_predictor)
    floored = make_predictor(cpu_overhead_s=None, engine=FLOORED)
    floor_s = FLOOR_MS * 1e-3 * TINY_MODEL.num_layers
    q, kv = np.array([64, 1]), np.array([0, 100])  # a prefill chunk: launched op by op
    assert plain.stage_times_s(q, kv)[0] < floor_s
    assert floored.stage_times_s(q, kv)[0] == pytest.approx(floor_s + 0.001 + 2 * 0.0001)
    q, kv = np.ones(8, dtype=np.int64), np.full(8, 50)  # within the largest decode graph: replayed, padded
    assert floored.stage_times_s(q, kv)[0] == pytest.approx(plain.stage_times_s(q, kv)[0] + 0.001 + 8 * 0.0001)
    q, kv = np.ones(9, dtype=np.int64), np.full(9, 50)  # one more decode than the largest graph
    assert floored.stage_times_s(q, kv)[0] == pytest.approx(floor_s + 0.001 + 9 * 0.0001)


def test_piecewise_floor_applies_to_piecewise_batches():
    engine = dataclasses.replace(load_engine_profile("vllm_v1"), piecewise_launch_ms_per_layer=0.03)
    assert engine.launch_floor_ms_per_layer(engine.launch_path(100, 3)) == 0.03
    assert engine.launch_floor_ms_per_layer(engine.launch_path(3, 3)) == 0.0
    assert engine.launch_floor_ms_per_layer(engine.launch_path(900, 3)) == engine.eager_launch_ms_per_layer


def test_async_scheduling_overlaps_the_host_with_the_gpu(make_predictor):
    sync = make_predictor(cpu_overhead_s=None, engine=dataclasses.replace(FLOORED, eager_launch_ms_per_layer=0.0, cpu_overhead_ms=2.0))
    overlapped = make_predictor(cpu_overhead_s=None, engine=dataclasses.replace(FLOORED, eager_launch_ms_per_layer=0.0,
                                                           cpu_overhead_ms=2.0, async_scheduling=True))
    gpu = kernels(make_predictor)
    for q, kv in (([1, 1], [10, 20]), ([2000], [0])):  # host-bound, then GPU-bound
        gpu_s = gpu.stage_times_s(q, kv)[0]
        host_s = 0.002 + 0.0001 * len(q)
        assert sync.stage_times_s(q, kv)[0] == pytest.approx(gpu_s + host_s)
        assert overlapped.stage_times_s(q, kv)[0] == pytest.approx(max(gpu_s, host_s))
    result = overlapped.breakdown([1, 1], [10, 20])  # host-bound: the exposed host time is what shows
    assert sum(result.breakdown_ms.values()) == pytest.approx(result.total_ms, rel=1e-9)


def test_soft_maximum_of_kernel_time_and_floor():
    assert launch_bound_s(0.0, 0.01, 6.0) == pytest.approx(0.01)
    assert launch_bound_s(0.01, 0.01, 6.0) == pytest.approx(0.01 * 2 ** (1 / 6))  # 1.12 x at the crossing
    assert launch_bound_s(0.02, 0.01, 6.0) == pytest.approx(0.02, rel=3e-3)
    spans = launch_bound_s(np.array([0.005, 0.01, 0.04]), 0.01, 6.0)
    assert np.all(spans >= np.maximum([0.005, 0.01, 0.04], 0.01)) and np.all(np.diff(spans) > 0)
    with pytest.raises(ConfigError, match="eager_overlap_exponent"):
        EngineProfile(name="x", eager_overlap_exponent=0.5)


def test_floor_is_applied_per_pipeline_stage(make_predictor):
    stages = make_predictor(pp=2, cpu_overhead_s=None, engine=FLOORED).stage_times_s(np.array([64]), np.array([0]))
    per_stage_floor = FLOOR_MS * 1e-3 * TINY_MODEL.num_layers / 2
    assert stages[1] == pytest.approx(per_stage_floor)
    assert stages[0] == pytest.approx(per_stage_floor + 0.001 + 0.0001)


@pytest.mark.parametrize("pp", [1, 2])
@pytest.mark.parametrize("batch", [5, 12])  # within and past the largest graph (8)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_decode_run_equals_step_by_step_with_host_terms(make_predictor, pp, batch, asynchronous):
    predictor = make_predictor(pp=pp, cpu_overhead_s=None, engine=dataclasses.replace(FLOORED, async_scheduling=asynchronous))
    kv = np.random.default_rng(batch).integers(1, 3000, size=batch)
    run = predictor.decode_run_stage_times_s(kv, 40)
    steps = np.array([predictor.stage_times_s(np.ones_like(kv), kv + k) for k in range(40)])
    np.testing.assert_array_equal(run, steps)


def test_host_terms_appear_in_the_breakdown_once(make_predictor):
    floored = make_predictor(cpu_overhead_s=None, engine=FLOORED)
    result = floored.breakdown([64, 1], [0, 100])
    assert sum(result.breakdown_ms.values()) == pytest.approx(result.total_ms, rel=1e-9)
    assert result.breakdown_ms["cpu_overhead"] == pytest.approx(1.2)  # 1 ms + 2 x 0.1 ms, once
    kernels_ms = sum(v for k, v in result.breakdown_ms.items() if k not in ("cpu_overhead", "launch_wait"))
    assert kernels_ms + result.breakdown_ms["launch_wait"] == pytest.approx(
        FLOOR_MS * TINY_MODEL.num_layers, rel=1e-6)
    assert result.engine == "floored"


def test_a_number_replaces_the_engine_host_terms(make_predictor):
    constant = make_predictor(cpu_overhead_s=0.002, engine=FLOORED)
    q, kv = np.array([64, 1]), np.array([0, 100])
    assert constant.stage_times_s(q, kv)[0] == pytest.approx(kernels(make_predictor).stage_times_s(q, kv)[0] + 0.002)
    with pytest.raises(ValueError, match="cpu_overhead_s"):
        make_predictor(cpu_overhead_s="fast", engine=FLOORED)
