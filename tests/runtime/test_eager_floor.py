"""The eager-launch floor: batches launched op by op take at least layers x the host's launch time per
layer; decode-only batches replayed from CUDA graphs do not (simulator/runtime/cpu_overhead.py)."""
import numpy as np
import pytest
from synthetic import TINY_MODEL

from simulator.runtime.cpu_overhead import DEFAULT_CPU_OVERHEAD, CpuOverhead, cpu_overhead

FLOOR_PER_LAYER_S = 0.05  # far above any synthetic batch's GPU time per layer, so the floor binds
# A hard maximum (a huge exponent) keeps the expected values exact; the soft one is tested on its own.
HOST = CpuOverhead(fixed_s=0.001, per_sequence_s=0.0001, eager_floor_s_per_layer=FLOOR_PER_LAYER_S,
                   eager_overlap_exponent=200.0, graph_max_batch=8)


def test_floor_binds_only_for_batches_launched_op_by_op(make_predictor):
    plain = make_predictor(cpu_overhead_s=0.0)
    floored = make_predictor(cpu_overhead_s=HOST)
    floor_s = FLOOR_PER_LAYER_S * TINY_MODEL.num_layers
    # A prefill chunk: launched eagerly, its GPU time lifted to the floor, the CPU overhead on top.
    q, kv = np.array([64, 1]), np.array([0, 100])
    assert plain.stage_times_s(q, kv)[0] < floor_s
    assert floored.stage_times_s(q, kv)[0] == pytest.approx(floor_s + 0.001 + 2 * 0.0001)
    # Decodes within the largest captured graph (8): replayed, no floor.
    q, kv = np.ones(8, dtype=np.int64), np.full(8, 50)
    assert floored.stage_times_s(q, kv)[0] == pytest.approx(plain.stage_times_s(q, kv)[0] + 0.001 + 8 * 0.0001)
    # One more decode than the largest graph: eager again.
    q, kv = np.ones(9, dtype=np.int64), np.full(9, 50)
    assert floored.stage_times_s(q, kv)[0] == pytest.approx(floor_s + 0.001 + 9 * 0.0001)


def test_which_batches_launch_eagerly():
    host = CpuOverhead(fixed_s=0.0, eager_floor_s_per_layer=1e-9)
    assert host.launched_eagerly(num_tokens=100, num_sequences=2)
    assert not host.launched_eagerly(num_tokens=2, num_sequences=2)
    assert host.launched_eagerly(num_tokens=257, num_sequences=257)  # past the largest graph (256)


def test_soft_maximum_of_kernel_time_and_floor():
    host = CpuOverhead(fixed_s=0.0, eager_floor_s_per_layer=1e-3)  # p = 6
    assert host.eager_gpu_s(0.0, 0.01) == pytest.approx(0.01)
    assert host.eager_gpu_s(0.01, 0.01) == pytest.approx(0.01 * 2 ** (1 / 6))  # 1.12 x at the crossing
    assert host.eager_gpu_s(0.02, 0.01) == pytest.approx(0.02, rel=3e-3)
    spans = host.eager_gpu_s(np.array([0.005, 0.01, 0.04]), 0.01)
    assert np.all(spans >= np.maximum([0.005, 0.01, 0.04], 0.01))
    assert np.all(np.diff(spans) > 0)
    with pytest.raises(ValueError, match="eager_overlap_exponent"):
        CpuOverhead(fixed_s=0.0, eager_overlap_exponent=0.5)


def test_floor_is_applied_per_pipeline_stage(make_predictor):
    floored = make_predictor(pp=2, cpu_overhead_s=HOST)
    q, kv = np.array([64]), np.array([0])
    stages = floored.stage_times_s(q, kv)
    per_stage_floor = FLOOR_PER_LAYER_S * TINY_MODEL.num_layers / 2
    assert stages[1] == pytest.approx(per_stage_floor)
    assert stages[0] == pytest.approx(per_stage_floor + 0.001 + 0.0001)


@pytest.mark.parametrize("pp", [1, 2])
@pytest.mark.parametrize("batch", [5, 12])  # within and past the largest graph (8)
def test_decode_run_equals_step_by_step_with_host_terms(make_predictor, pp, batch):
    predictor = make_predictor(pp=pp, cpu_overhead_s=HOST)
    kv = np.random.default_rng(batch).integers(1, 3000, size=batch)
    run = predictor.decode_run_stage_times_s(kv, 40)
    steps = np.array([predictor.stage_times_s(np.ones_like(kv), kv + k) for k in range(40)])
    np.testing.assert_array_equal(run, steps)


def test_breakdown_counts_the_launch_wait_as_host_time(make_predictor):
    floored = make_predictor(cpu_overhead_s=HOST)
    result = floored.breakdown([64, 1], [0, 100])
    assert sum(result.breakdown_ms.values()) == pytest.approx(result.total_ms, rel=1e-9)
    gpu_ms = sum(v for k, v in result.breakdown_ms.items() if k != "cpu_overhead")
    assert gpu_ms + result.breakdown_ms["cpu_overhead"] == pytest.approx(
        FLOOR_PER_LAYER_S * TINY_MODEL.num_layers * 1e3 + 1.2, rel=1e-6)


def test_named_and_numeric_host_terms():
    assert cpu_overhead(None) is DEFAULT_CPU_OVERHEAD
    assert DEFAULT_CPU_OVERHEAD.eager_floor_s_per_layer * 32 == pytest.approx(15.631e-3)
    assert cpu_overhead(0.002).eager_floor_s_per_layer == 0.0  # a number: constant overhead, no floor
    assert cpu_overhead("vllm_v0").eager_floor_s_per_layer == 0.0
    with pytest.raises(ValueError, match="eager_floor_s_per_layer"):
        CpuOverhead(fixed_s=0.0, eager_floor_s_per_layer=-1.0)
