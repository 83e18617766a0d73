"""Attention of the CPU path against references: causal within the chunk, full over the cached prefix."""
import math

import torch
import torch.nn.functional as F

from profiler.attention import (
    attention,
    attention_work,
    bottom_right_causal_mask,
    check_backend,
    choose_backend,
    make_batch,
    reference_attention,
    relative_error,
)
from profiler.grid import AttentionPoint


def rand_qkv(comp, hq=4, hk=2, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b = make_batch(comp, "cpu")
    return (torch.randn(b.total_q, hq, d, generator=g, dtype=dtype), torch.randn(b.total_k, hk, d, generator=g, dtype=dtype),
            torch.randn(b.total_k, hk, d, generator=g, dtype=dtype), b)


def test_mask_is_aligned_bottom_right():
    m = bottom_right_causal_mask(2, 3, "cpu")
    assert m.tolist() == [[True, True, True, True, False],
                          [True, True, True, True, True]]


def test_offsets_of_a_mixed_batch():
    b = make_batch(((3, 2), (1, 5)), "cpu")
    assert b.cu_q.tolist() == [0, 3, 4] and b.cu_k.tolist() == [0, 5, 11]
    assert (b.max_q, b.max_k, b.total_q, b.total_k) == (3, 6, 4, 11)


def test_reference_by_hand_single_head():
    # One sequence, prefix 1, chunk 2, head_dim 1: query j sees keys 0..1+j.
    q = torch.tensor([[[1.0]], [[2.0]]])
    k = torch.tensor([[[0.0]], [[1.0]], [[3.0]]])
    v = torch.tensor([[[10.0]], [[20.0]], [[30.0]]])
    b = make_batch(((2, 1),), "cpu")
    out = reference_attention(q, k, v, b, scale=1.0)
    w0 = torch.softmax(torch.tensor([0.0, 1.0]), 0)            # query 0 over keys 0, 1
    w1 = torch.softmax(torch.tensor([0.0, 2.0, 6.0]), 0)       # query 1 over keys 0, 1, 2
    assert math.isclose(out[0, 0, 0].item(), (w0 * torch.tensor([10.0, 20.0])).sum().item(), rel_tol=1e-6)
    assert math.isclose(out[1, 0, 0].item(), (w1 * torch.tensor([10.0, 20.0, 30.0])).sum().item(), rel_tol=1e-6)


def test_sdpa_masked_matches_reference_on_mixed_gqa_batch():
    comp = ((5, 9), (1, 20), (7, 0), (1, 1))
    q, k, v, b = rand_qkv(comp, seed=1)
    out = attention("sdpa_masked", q, k, v, b, scale=0.3)
    assert relative_error(out, reference_attention(q, k, v, b, 0.3)) < 1e-5


def test_batched_launch_equals_sequences_alone():
    comp = ((4, 3), (1, 6))
    q, k, v, b = rand_qkv(comp, seed=2)
    out = attention("sdpa_masked", q, k, v, b, 0.5)
    alone = attention("sdpa_masked", q[4:], k[7:], v[7:], make_batch(((1, 6),), "cpu"), 0.5)
    assert torch.allclose(out[4:], alone, atol=1e-6)


def test_top_left_causal_would_fail_the_check():
    # SDPA's is_causal aligns the mask top-left when q_len != k_len: wrong for a chunk over a prefix. The
    # reference must tell the two apart, or the GPU check could not catch a misaligned kernel.
    comp = ((5, 9),)
    q, k, v, b = rand_qkv(comp, hq=2, hk=2, seed=3)
    top_left = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                              is_causal=True, scale=0.4).transpose(0, 1)
    assert relative_error(top_left, reference_attention(q, k, v, b, 0.4)) > 0.1


def test_check_and_choice_on_cpu():
    report = check_backend("sdpa_masked", "cpu", torch.float32)
    assert report["passed"] and report["max_rel_error"] < 1e-5
    bf16 = check_backend("sdpa_masked", "cpu", torch.bfloat16)
    assert bf16["passed"] and 1e-4 < bf16["max_rel_error"] < 2e-2   # bf16 rounding, not exact
    name, reports = choose_backend("cpu", torch.float32)
    assert name == "sdpa_masked" and reports[0]["passed"]


def test_work_counts_by_hand():
    p = AttentionPoint(1, 4, 2, 8, ((2, 3), (1, 0)))
    flops, bytes_ = attention_work(p, 2)
    pairs = 2 * 3 + 2 * 3 / 2 + 1          # chunk: 2x3 prefix pairs + 3 causal pairs; decode: 1
    assert flops == 4 * 4 * 8 * pairs
    assert bytes_ == 2 * 8 * (2 * 3 * 4 + 2 * 6 * 2)   # q read + out written; K and V of 6 tokens
