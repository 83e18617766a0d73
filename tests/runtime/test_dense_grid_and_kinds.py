"""Dense-ladder fitting (robust interpolation, coarse-width regions, the embedding's kernel switch) and
the per-launch-kind attention fit with its list-scheduling features: hand-computable cases."""
import numpy as np
import pytest
from synthetic import TEST_GPU, TINY_MODEL

from simulator.runtime import features as F
from simulator.runtime.fit import (
    KEPT_PER_KIND,
    attention_data,
    attention_kind_masks,
    attention_region_groups,
    coarse_region_groups,
    fit_attention,
)
from simulator.runtime.model import ResidualInterpolatedRegressor, running_median
from simulator.runtime.tables import read_attention


def test_running_median_removes_isolated_spikes_and_keeps_steps():
    assert running_median(np.array([0, 0, 5, 0, 0, 1, 1, 1.0]), 3).tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert running_median(np.array([2, 2, 2, 9, 9, 9, 9.0]), 5).tolist() == [2, 2, 2, 9, 9, 9, 9]
    with pytest.raises(ValueError, match="odd"):
        ResidualInterpolatedRegressor(median_window=4).fit(np.ones((4, 2)) + np.arange(4)[:, None],
                                                           np.ones(4))


def test_median_interpolation_keeps_a_slow_kernel_pick_out_of_its_neighbours():
    n = np.arange(8, 400, 8, dtype=float)
    X = np.column_stack([n, 1e3 * n])
    y = 0.01 + X[:, 1] / 1e7
    spiky = y.copy()
    spiky[20] *= 2.0  # one count where cuBLAS picks a slow kernel
    plain = ResidualInterpolatedRegressor(column=0, linear_columns=[1]).fit(X, spiky)
    robust = ResidualInterpolatedRegressor(column=0, linear_columns=[1], median_window=5).fit(X, spiky)
    neighbour = np.array([[n[20] + 4, 1e3 * (n[20] + 4)]])  # between the spike and the next count
    truth = 0.01 + neighbour[0, 1] / 1e7
    assert robust.predict(neighbour)[0] == pytest.approx(truth, rel=0.01)
    assert plain.predict(neighbour)[0] > 1.3 * truth  # interpolating through the spike smears it


def test_coarse_regions_span_the_first_ladders_blocks():
    coarse = [1, 2, 4, 8, 16, 32, 64, 128]  # two blocks of 4: 1..8 and 16..128
    dense = np.arange(1, 129)
    groups = coarse_region_groups(dense, coarse_ladder=coarse)
    assert set(groups[dense < 16]) == {0} and set(groups[dense >= 16]) == {1}


def test_embedding_small_index_kernel_feature():
    work = F.AffineWork(flops_per_token=0.0, flops_fixed=0.0, bytes_per_token=8192.0, bytes_fixed=0.0)
    peaks = F.Peaks(flops_per_s=1e15, bytes_per_s=3e12)
    frame = F.token_features(np.array([1, 15, 16, 17, 64]), work, peaks, serial_index_limit=16)
    assert frame["serial_index_rows"].tolist() == [1, 15, 16, 0, 0]
    assert (F.token_features(np.array([1, 16]), work, peaks)["serial_index_rows"] == 0).all()


def test_list_bounds_of_decode_and_chunk_launches():
    shape = F.AttentionShape(q_heads=32, kv_heads=8, num_sms=132)
    col = F.ATTENTION_FEATURES.index
    # 40 decodes of 1,000 cached tokens: 40 x 8 packed blocks > 2 x 132 slots, FA2 does not split.
    many = F.attention_features(np.ones(40), np.full(40, 1000), shape)[0]
    assert many[col("decode_list_bound")] == pytest.approx(1001 + 40 * 1001 * 8 / 264)
    assert F.attention_features(np.ones(20), np.full(20, 1000), shape)[0][col("decode_list_bound")] == 0
    # 16 chunks of 32 tokens over a 1,000-token prefix: 16 x 32 query blocks > 132 SMs.
    chunks = F.attention_features(np.full(16, 32), np.full(16, 1000), shape)[0]
    assert chunks[col("chunk_list_bound")] == pytest.approx(1032 + 32 * 16 * (1000 + 16) / 132)
    one = F.attention_features(np.array([256]), np.array([0]), shape)[0]  # 2 x 32 blocks fit
    assert one[col("chunk_list_bound")] == 0 and one[col("decode_list_bound")] == 0


def test_attention_is_fitted_per_launch_kind_and_falls_back_to_one_model(profiles_dir):
    frame = read_attention(profiles_dir / TEST_GPU.profile / TINY_MODEL.name / "attention.csv", 1)
    shape = F.AttentionShape(q_heads=TINY_MODEL.num_q_heads, kv_heads=TINY_MODEL.num_kv_heads)
    X, y = attention_data(frame, shape)
    groups, masks = attention_region_groups(frame), attention_kind_masks(frame)
    kept, scores = fit_attention(X, y, groups, masks)
    assert set(kept) == {"decode", "chunk"}
    assert kept["decode"][0] in ("roofline_linear", "roofline_max", "roofline_sum_max")  # closed-form runs
    pooled = scores["attention"][KEPT_PER_KIND]
    assert pooled.num_points == len(y)
    # Too few decode-only launches to hold regions out: one model for every launch.
    few = masks["decode"] & (np.cumsum(masks["decode"]) > 5)
    rows = ~few
    kept, _ = fit_attention(X[rows], y[rows], groups[rows], {k: m[rows] for k, m in masks.items()})
    assert set(kept) == {"all"}
