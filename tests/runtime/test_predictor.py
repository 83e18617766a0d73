"""The predictor against the known cost formula of the synthetic tables, and its invariants."""
import numpy as np
import pytest
from synthetic import TINY_MODEL, true_attention_ms, true_comm_ms, true_op_ms

from simulator.engine import load_engine_profile
from simulator.runtime.predictor import BREAKDOWN_KEYS, layers_per_stage

LAYER_OPS = {"qkv_proj": 1, "rope": 1, "attn_out_proj": 1, "mlp_up_gate": 1, "act": 1, "mlp_down": 1,
             "rmsnorm": 2, "residual_add": 2}


def true_iteration_ms(composition, tp=1):
    """The synthetic GPU's iteration time (tp=1, pp=1, no CPU overhead), built the documented way."""
    n = sum(q for q, _ in composition)
    layer = sum(k * true_op_ms(TINY_MODEL, tp, op, n) for op, k in LAYER_OPS.items())
    layer += true_attention_ms(TINY_MODEL, tp, composition)
    extra = true_op_ms(TINY_MODEL, tp, "embedding", n) + true_op_ms(TINY_MODEL, tp, "rmsnorm", n)
    extra += true_op_ms(TINY_MODEL, tp, "lm_head", len(composition)) + true_op_ms(TINY_MODEL, tp, "sampling", len(composition))
    return layer * TINY_MODEL.num_layers + extra


def split(composition):
    pairs = np.asarray(composition)
    return pairs[:, 0], pairs[:, 1]


BATCHES = [
    [[512, 0]],
    [[1, 1000]] * 32,
    [[256, 1024], [1, 100], [1, 2500]],
    [[1536, 500]],                        # between profiled chunk lengths (1024, 2048) and prefixes
    [[1, 3900]] * 100,                    # beyond profiled decode batch and context
    [[2560, 2500]],                       # slightly beyond the attention grid (chunks to 2048, prefixes to 2048)
]


@pytest.mark.parametrize("composition", BATCHES, ids=lambda c: f"{len(c)}seq-q{c[0][0]}-kv{c[0][1]}")
def test_prediction_matches_the_known_formula(make_predictor, composition):
    predicted_ms = make_predictor().stage_times_s(*split(composition)).sum() * 1e3
    assert predicted_ms == pytest.approx(true_iteration_ms(composition), rel=0.05)


def test_more_tokens_never_faster_beyond_noise(make_predictor):
    predictor = make_predictor()
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        q = np.where(rng.random(n) < 0.2, rng.integers(2, 3000, n), 1)
        kv = rng.integers(0, 3000, n)
        base = predictor.stage_times_s(q, kv).sum()
        i = int(rng.integers(n))
        more_q, more_kv = q.copy(), kv.copy()
        if q[i] > 1:
            more_q[i] += int(rng.integers(1, 500))
        else:
            more_kv[i] += int(rng.integers(1, 500))
        assert predictor.stage_times_s(more_q, more_kv).sum() >= base * 0.99
        # One more sequence never makes the batch faster either.
        assert predictor.stage_times_s(np.append(q, 1), np.append(kv, 10)).sum() >= base * 0.99


@pytest.mark.parametrize("pp", [1, 2])
def test_decode_run_equals_step_by_step(make_predictor, pp):
    predictor = make_predictor(pp=pp, cpu_overhead_s=None)
    kv = np.random.default_rng(4).integers(1, 3000, size=37)
    run = predictor.decode_run_stage_times_s(kv, 250)
    steps = np.array([predictor.stage_times_s(np.ones_like(kv), kv + k) for k in range(250)])
    assert run.shape == (250, pp)
    np.testing.assert_array_equal(run, steps)
    assert predictor.decode_run_stage_times_s(kv, 0).shape == (0, pp)


@pytest.mark.parametrize("negative", [False, True], ids=["non-negative", "some-negative"])
def test_short_decode_runs_equal_single_steps_whatever_fa2_splits(make_predictor, negative):
    """Runs that stay in one KV block, cross one, or never split, at batch sizes FA2 splits or not."""
    import dataclasses

    from simulator.runtime.predictor import RuntimePredictor

    base = make_predictor(cpu_overhead_s=None)
    rng = np.random.default_rng(6)
    # Every feature with a non-zero coefficient in every branch, so every term is exercised; negative
    # ones turn the max/min terms around (decode_attention._pair).
    coef = rng.uniform(1e-6, 1e-3, size=base.fitted.attention_coef.shape)
    if negative:
        coef[rng.random(coef.shape) < 0.3] *= -0.2
    predictor = RuntimePredictor(dataclasses.replace(base.fitted, attention_coef=coef, attention_trees=None),
                                 TINY_MODEL, 1, base.engine)
    shape = predictor.attention.shape
    split_choices = set()
    for n in (1, 2, 5, 20, 60):
        for longest in (1, 100, 127, 128, 129, 1000, 2900):
            kv = rng.integers(0, longest + 1, size=n)
            kv[0] = longest
            split_choices.add(shape.decode_split(n, longest + 1)[0] > 1 and n * shape.kv_heads < 0.8 * 2 * shape.num_sms)
            for steps in (1, 2, 7, 130):
                run = predictor.decode_run_stage_times_s(kv, steps)
                singles = np.array([predictor.stage_times_s(np.ones_like(kv), kv + k) for k in range(steps)])
                np.testing.assert_array_equal(run, singles)
    assert split_choices == {True, False}  # both kinds of launch were exercised


def test_breakdown_adds_up_and_splits_attention_by_kind(make_predictor):
    predictor = make_predictor(cpu_overhead_s=0.002)
    result = predictor.breakdown(*split([[512, 100], [1, 1000], [1, 2000]]))
    assert set(result.breakdown_ms) == set(BREAKDOWN_KEYS)
    assert sum(result.breakdown_ms.values()) == pytest.approx(result.total_ms, rel=1e-9)
    assert result.breakdown_ms["cpu_overhead"] == pytest.approx(2.0)
    assert result.breakdown_ms["communication"] == 0.0  # tp = pp = 1
    assert result.breakdown_ms["attention_prefill"] > 0 and result.breakdown_ms["attention_decode"] > 0
    decode_only = predictor.breakdown(*split([[1, 1000]] * 8))
    assert decode_only.breakdown_ms["attention_prefill"] == 0.0


def test_cpu_overhead_default_zero_and_constant(make_predictor):
    q, kv = split([[1, 500]] * 10)
    none = make_predictor(cpu_overhead_s=0.0).stage_times_s(q, kv)
    const = make_predictor(cpu_overhead_s=0.001).stage_times_s(q, kv)
    default = make_predictor(cpu_overhead_s=None).stage_times_s(q, kv)
    assert const[0] - none[0] == pytest.approx(0.001)
    host = load_engine_profile("servesim_execute")  # the make_predictor fixture's engine
    assert default[0] - none[0] == pytest.approx((host.cpu_overhead_ms + 10 * host.cpu_overhead_per_sequence_ms) * 1e-3)


def test_pipeline_stages_split_layers_and_add_sends(make_predictor):
    assert layers_per_stage(4, 3).tolist() == [2, 1, 1]
    composition = [[512, 0], [1, 700]]
    q, kv = split(composition)
    one = make_predictor(pp=1, cpu_overhead_s=0.001).stage_times_s(q, kv)
    two = make_predictor(pp=2, cpu_overhead_s=0.001).stage_times_s(q, kv)
    send_s = true_comm_ms("send_recv", 513 * TINY_MODEL.hidden_size * 2) * 1e-3
    assert two.shape == (2,)
    assert two.sum() == pytest.approx(one.sum() + send_s, rel=0.01)
    # Stage 0 carries the CPU overhead and the embedding, the last stage the LM head: with equal layers
    # the difference between them is exactly those extras (and the send of stage 0).
    assert two[0] > two[1] - 1e-4


def test_tensor_parallel_adds_two_all_reduces_per_layer(make_predictor):
    composition = [[1024, 0]]
    q, kv = split(composition)
    predictor = make_predictor(tp=2)
    result = predictor.breakdown(q, kv)
    message = 1024 * TINY_MODEL.hidden_size * 2
    expected = (2 * TINY_MODEL.num_layers + 1) * true_comm_ms("all_reduce", message)
    logits = true_comm_ms("all_reduce", 1 * 1000 * 2 * 2 / 2)
    assert result.breakdown_ms["communication"] == pytest.approx(expected + logits, rel=0.02)
    compute = result.total_ms - result.breakdown_ms["communication"]
    assert compute == pytest.approx(true_iteration_ms(composition, tp=2), rel=0.05)


def test_bad_batches_are_rejected(make_predictor):
    predictor = make_predictor()
    with pytest.raises(ValueError, match="equal-length"):
        predictor.stage_times_s(np.array([1, 1]), np.array([5]))
    with pytest.raises(ValueError, match="non-empty"):
        predictor.decode_run_stage_times_s(np.array([], dtype=int), 3)


@pytest.mark.parametrize("family", ["roofline_linear", "roofline_max", "roofline_max_x_boosted_trees"])
def test_hot_path_equals_the_estimator_and_decode_runs_for_every_family(make_predictor, profiles_dir, family):
    """The exported arrays the simulator evaluates give the fitted estimator's own predictions."""
    import dataclasses

    from simulator.runtime.features import attention_feature_table
    from simulator.runtime.fit import attention_data, attention_families, export_attention
    from simulator.runtime.predictor import RuntimePredictor
    from simulator.runtime.tables import read_attention

    base = make_predictor()
    frame = read_attention(profiles_dir / "testgpu" / TINY_MODEL.name / "attention.csv", 1)
    X, y = attention_data(frame, base.fitted.attention_shape())
    decode = (frame["kind"] == "decode").to_numpy()
    one = attention_families()[family].fit(X, y)
    per_kind = {"decode": attention_families()[family].fit(X[decode], y[decode]),
                "chunk": attention_families()[family].fit(X[~decode], y[~decode])}
    coef, trees = export_attention(one)
    chunk_coef, chunk_trees = export_attention(per_kind["chunk"])
    decode_coef, decode_trees = export_attention(per_kind["decode"])
    variants = [  # one model for every launch; a model per launch kind
        (dataclasses.replace(base.fitted, attention_coef=coef, attention_trees=trees, decode_attention_coef=None,
                             decode_attention_trees=None), {"decode": one, "chunk": one}),
        (dataclasses.replace(base.fitted, attention_coef=chunk_coef, attention_trees=chunk_trees,
                             decode_attention_coef=decode_coef, decode_attention_trees=decode_trees), per_kind),
    ]
    batches = BATCHES + [[[1, int(k)] for k in range(5, 800, 37)], [[1, 3000]] * 200]
    for fitted, estimators in variants:
        predictor = RuntimePredictor(fitted, TINY_MODEL, 1, base.engine)
        shape = fitted.attention_shape()
        for composition in batches:
            q, kv = split(composition)
            estimator = estimators["decode" if (q == 1).all() else "chunk"]
            expected = estimator.predict(attention_feature_table([composition], shape))[0]
            # Decode-only launches use coefficients rounded to multiples of 2^-46 ms (decode_attention.py).
            rel = 1e-7 if (q == 1).all() else 1e-9
            assert predictor.attention.batch_ms(q, kv) == pytest.approx((expected, q.sum()), rel=rel)
        for kv in (np.random.default_rng(5).integers(1, 3000, size=20), np.full(300, 7)):
            run = predictor.decode_run_stage_times_s(kv, 120)
            steps = np.array([predictor.stage_times_s(np.ones_like(kv), kv + k) for k in range(120)])
            np.testing.assert_array_equal(run, steps)


def test_token_op_tables_pass_through_every_measured_point(make_predictor, profiles_dir):
    """What the simulator uses for a token-wise op is the measurement at every profiled count."""
    import pandas as pd

    fitted = make_predictor().fitted
    ops = pd.read_csv(profiles_dir / "testgpu" / TINY_MODEL.name / "ops.csv")
    ops = ops[ops["tp"] == 1]
    grid = fitted.grid_tokens
    for op, rows in ops.groupby("op"):
        measured = rows.groupby("num_tokens")["time_ms"].apply(lambda t: np.exp(np.log(t).mean()))
        at = np.searchsorted(grid, measured.index.to_numpy(dtype=float))
        np.testing.assert_allclose(fitted.op_ms[op][at], measured.to_numpy(), rtol=1e-9, err_msg=op)


def test_one_row_tree_factor_equals_the_vectorised_one(make_predictor, profiles_dir):
    """The hot path's factor_one (one batch with a chunk) and factor (feature rows of a decode run)
    evaluate the same exported trees to the same bits."""
    from simulator.runtime.attention_time import _Trees
    from simulator.runtime.features import attention_feature_table
    from simulator.runtime.fit import attention_data, attention_families, export_attention
    from simulator.runtime.tables import read_attention

    base = make_predictor()
    frame = read_attention(profiles_dir / "testgpu" / TINY_MODEL.name / "attention.csv", 1)
    X, y = attention_data(frame, base.fitted.attention_shape())
    _, trees = export_attention(attention_families()["roofline_max_x_boosted_trees"].fit(X, y))
    evaluate = _Trees(trees)
    rng = np.random.default_rng(8)
    for _ in range(200):
        q = rng.integers(1, 2048, size=int(rng.integers(1, 12)))
        q[1:] = np.where(rng.random(len(q) - 1) < 0.7, 1, q[1:])
        row = attention_feature_table([np.column_stack([q, rng.integers(0, 4000, size=len(q))])],
                                      base.fitted.attention_shape())
        assert evaluate.factor_one(row[0].tolist()) == evaluate.factor(row)[0]


def test_lists_as_the_simulator_passes_them_give_the_arrays_bits(make_predictor):
    """Batches of up to FEW_SEQUENCES are summed over the simulator's lists without array conversions:
    the same times bit for bit, for decode-only and mixed batches, and when the longest cached context
    is a chunk's (the features' second pass over the decodes)."""
    from simulator.runtime.features import ATTENTION_FEATURES, FEW_SEQUENCES, batch_attention_features

    predictor = make_predictor(cpu_overhead_s=None)
    rng = np.random.default_rng(8)
    for n in (1, 2, 7, FEW_SEQUENCES, FEW_SEQUENCES + 1, 150):
        for chunk_share in (0.0, 0.2, 1.0):
            q = np.where(rng.random(n) < chunk_share, rng.integers(2, 2000, n), 1)
            kv = rng.integers(0, 3000, n)
            if chunk_share and (q > 1).any():
                kv[np.argmax(q > 1)] = 4000  # the longest context belongs to a chunk
            expected = predictor.stage_times_s(q, kv)
            np.testing.assert_array_equal(predictor.stage_times_s(q.tolist(), kv.tolist()), expected)
            shape = predictor.attention.shape
            features = batch_attention_features(q.tolist(), kv.tolist(), shape)
            assert features == batch_attention_features(q, kv, shape)
            if 1 in q and (q > 1).any():  # the longest decode's context, found past the chunk's longer one
                assert features[ATTENTION_FEATURES.index("max_mixed_decode_context")] == kv[q == 1].max() + 1
    with pytest.raises(ValueError, match="equal-length"):
        predictor.stage_times_s([1, 1], [5])
