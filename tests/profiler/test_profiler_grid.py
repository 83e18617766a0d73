"""What the profiler measures: grids, dedupe keys, composition bookkeeping."""
import itertools

import pytest

from profiler.grid import (
    COARSE_TOKEN_LADDER,
    TOKEN_LADDER,
    attention_grid,
    composition_json,
    composition_kind,
    iteration_compositions,
    kv_capacity_tokens,
    op_grid,
    op_shape,
    parse_composition,
    token_counts,
    tp_degrees,
)
from profiler.schema import OP_NAMES
from simulator.config import load_model_config


def test_token_counts_stop_at_max_and_include_it():
    assert token_counts(10) == list(range(1, 11))
    assert token_counts(37) == list(range(1, 33)) + [36, 37]
    assert token_counts(16384)[-1] == 16384 and token_counts(16384) == sorted(set(token_counts(16384)))
    assert all(n in TOKEN_LADDER for n in token_counts(16384))


def test_dense_ladder_keeps_every_coarse_point_and_its_steps():
    assert set(COARSE_TOKEN_LADDER) <= set(TOKEN_LADDER)
    ladder = token_counts(32768)
    steps = dict(zip(ladder[1:], (b - a for a, b in itertools.pairwise(ladder))))
    assert steps[17] == 1 and steps[100] == 4 and steps[448] == 8 and steps[1024] == 16
    assert all(step <= n / 8 for n, step in steps.items() if n > 32)  # never sparser than 1/8 of the count


def test_intermediate_attention_points_keep_the_first_grid():
    m = load_model_config("llama-3-8b")
    dense = {p.composition for p in attention_grid(m, 1, kv_capacity=10**6, max_layer_kv_tokens=10**6)}
    from profiler import grid
    first = grid.intermediate_compositions
    try:
        grid.intermediate_compositions = lambda *args: []
        coarse = {p.composition for p in attention_grid(m, 1, kv_capacity=10**6, max_layer_kv_tokens=10**6)}
    finally:
        grid.intermediate_compositions = first
    assert coarse < dense  # every point of the first profiles is still measured, and more
    assert tuple((1, 3071) for _ in range(24)) in dense  # between the batch and context ladders


def test_tp_degrees_follow_head_divisibility(tiny_model):
    assert tp_degrees(load_model_config("yi-34b")) == [1, 2, 4, 8]  # 56 q heads, 8 kv heads
    assert tp_degrees(tiny_model) == [1, 2, 4]                      # 4 q heads: tp 8 does not divide


def test_shapes_are_per_gpu_shards():
    m = load_model_config("llama-3-8b")  # 32 q / 8 kv heads, head_dim 128, intermediate 14336
    assert op_shape(m, 1, "qkv_proj") == ("linear", 4096, (32 + 16) * 128)
    assert op_shape(m, 8, "qkv_proj") == ("linear", 4096, (4 + 2) * 128)
    assert op_shape(m, 4, "mlp_up_gate") == ("linear", 4096, 2 * 14336 // 4)
    assert op_shape(m, 2, "lm_head") == ("linear", 4096, 128256 // 2)
    assert op_shape(m, 8, "sampling") == ("sampling", 128256)  # after the gather: full vocab
    with pytest.raises(ValueError, match="unknown op"):
        op_shape(m, 1, "softmax")


def test_llama3_and_mistral_share_every_non_vocab_op_shape():
    llama, mistral = load_model_config("llama-3-8b"), load_model_config("mistral-7b")
    vocab_ops = {"embedding", "lm_head", "sampling"}
    for tp in (1, 2, 4, 8):
        for op in OP_NAMES:
            same = op_shape(llama, tp, op) == op_shape(mistral, tp, op)
            assert same == (op not in vocab_ops), (tp, op)


def test_norm_and_add_rows_dedupe_across_tp():
    m = load_model_config("llama-2-7b")
    points = op_grid(m, [1, 2, 4, 8], ["rmsnorm", "qkv_proj"], 64)
    norm_keys = {p.shape_key for p in points if p.op == "rmsnorm"}
    qkv_keys = {p.shape_key for p in points if p.op == "qkv_proj"}
    assert len(norm_keys) == len(token_counts(64))           # one measurement per token count
    assert len(qkv_keys) == 4 * len(token_counts(64))        # one per TP shard
    assert {p.row_key for p in points if p.op == "rmsnorm"} == {(tp, "rmsnorm", n) for tp in (1, 2, 4, 8)
                                                               for n in token_counts(64)}


def test_logit_rows_are_capped():
    m = load_model_config("mistral-7b")  # 32k context: ops go to 32768 tokens, logits to 16384 rows
    points = op_grid(m, [1], ["lm_head", "mlp_down"], 32768)
    assert max(p.num_tokens for p in points if p.op == "lm_head") == 16384
    assert max(p.num_tokens for p in points if p.op == "mlp_down") == 32768


def test_composition_text_round_trip_and_errors():
    comp = ((512, 1024), (1, 300))
    assert composition_json(comp) == "[[512, 1024], [1, 300]]"
    assert parse_composition(composition_json(comp)) == comp
    for bad in ("[[0, 5]]", "[]", "nonsense", "[[1]]"):
        with pytest.raises(ValueError, match="composition"):
            parse_composition(bad)


def test_composition_kind():
    assert composition_kind(((1, 10), (1, 0))) == "decode"
    assert composition_kind(((16, 0), (8, 100))) == "prefill"
    assert composition_kind(((16, 0), (1, 100))) == "mixed"


def test_attention_grid_covers_kinds_within_limits(tiny_model):
    points = attention_grid(tiny_model, tp=1, kv_capacity=2000, max_layer_kv_tokens=1500, tiny=True)
    kinds = {composition_kind(p.composition) for p in points}
    assert kinds == {"prefill", "decode", "mixed"}
    for p in points:
        assert all(q + kv <= tiny_model.max_model_len for q, kv in p.composition)  # causal prefix fits
        assert sum(q + kv for q, kv in p.composition) <= 1500
        assert (p.num_q_heads, p.num_kv_heads, p.head_dim) == (4, 2, 16)
    assert len({p.composition for p in points}) == len(points)
    # chunks over a prefix, and decodes of different contexts, are both there
    assert any(len(p.composition) == 1 and p.composition[0][0] > 1 and p.composition[0][1] > 0 for p in points)
    assert any(composition_kind(p.composition) == "decode" and len({kv for _, kv in p.composition}) > 1
               for p in points)
    # deterministic
    again = attention_grid(tiny_model, tp=1, kv_capacity=2000, max_layer_kv_tokens=1500, tiny=True)
    assert [p.composition for p in again] == [p.composition for p in points]


def test_full_attention_grid_reaches_the_model_limits():
    m = load_model_config("llama-3-8b")
    points = attention_grid(m, 1, kv_capacity=10**7, max_layer_kv_tokens=10**7)
    single_prefills = [p.composition[0] for p in points if len(p.composition) == 1 and p.composition[0][0] > 1]
    assert max(q for q, _ in single_prefills) == 8192
    assert (16, 8192 - 16) in single_prefills                      # prefix up to max_model_len
    assert max(len(p.composition) for p in points) >= 512            # decode batches to >= 512


def test_kv_capacity_counts_weights_and_pipeline_stages():
    m = load_model_config("llama-2-7b")
    gib80 = 80 * 2**30
    tp1 = kv_capacity_tokens(m, 1, gib80)
    expected = (0.9 * gib80 - m.weight_bytes_per_gpu(1)) // m.kv_bytes_per_token(1)
    assert tp1 == expected
    assert kv_capacity_tokens(m, 1, gib80, pp=4) > 4 * tp1 * 0.9     # fewer layers and weights per GPU
    assert kv_capacity_tokens(load_model_config("llama-2-70b"), 1, gib80) == 0  # 70B does not fit one GPU


def test_iteration_compositions_are_seeded_and_bounded(tiny_model):
    comps = iteration_compositions(tiny_model, 50, seed=3, kv_capacity=1500, max_batch_tokens=256)
    assert comps == iteration_compositions(tiny_model, 50, seed=3, kv_capacity=1500, max_batch_tokens=256)
    assert comps != iteration_compositions(tiny_model, 50, seed=4, kv_capacity=1500, max_batch_tokens=256)
    assert len(comps) == 50
    for c in comps:
        assert sum(q for q, _ in c) <= 256 and sum(q + kv for q, kv in c) <= 1500
        assert all(q + kv <= tiny_model.max_model_len for q, kv in c)
    assert {composition_kind(c) for c in comps} == {"prefill", "decode", "mixed"}
