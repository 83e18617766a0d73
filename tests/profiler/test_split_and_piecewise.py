"""Engine launch modes in the profiler: split attention launches and piecewise CUDA-graph pieces compute
exactly what one fused launch and a plain forward pass compute (CPU, tiny shapes)."""
import pytest
import torch

from profiler.attention import (
    chunks_first,
    make_batch,
    make_split_batch,
    reference_attention,
    relative_error,
    split_attention,
)
from profiler.model import LlamaShard, make_step
from profiler.piecewise import PiecewiseForward


def test_chunks_first_keeps_each_kind_in_order():
    comp = [(1, 5), (7, 0), (1, 2), (3, 4), (1, 9)]
    assert chunks_first(comp) == [1, 3, 0, 2, 4]


def test_split_batch_offsets_by_hand():
    split = make_split_batch([(7, 3), (2, 0), (1, 5), (1, 1)], "cpu")
    assert (split.prefill_q, split.prefill_k) == (9, 12)             # chunk rows: 7 + 2 queries, 10 + 2 keys
    assert split.prefill.cu_q.tolist() == [0, 7, 9] and split.prefill.cu_k.tolist() == [0, 10, 12]
    assert split.decode.cu_q.tolist() == [0, 1, 2] and split.decode.cu_k.tolist() == [0, 6, 8]
    with pytest.raises(ValueError, match="chunks before its decodes"):
        make_split_batch([(1, 5), (7, 3)], "cpu")


@pytest.mark.parametrize("composition", [
    [(6, 4), (1, 9), (5, 0), (1, 1)],   # mixed
    [(1, 9), (1, 3)],                    # decodes only: one launch
    [(6, 4), (3, 0)],                    # chunks only: one launch
])
def test_split_attention_equals_the_reference(composition):
    ordered = [composition[i] for i in chunks_first(composition)]
    batch = make_batch(ordered, "cpu")
    g = torch.Generator().manual_seed(0)
    q = torch.randn((batch.total_q, 4, 8), generator=g)
    k = torch.randn((batch.total_k, 2, 8), generator=g)
    v = torch.randn((batch.total_k, 2, 8), generator=g)
    out = split_attention("sdpa_masked", q, k, v, make_split_batch(ordered, "cpu"), 8 ** -0.5)
    assert relative_error(out, reference_attention(q, k, v, batch, 8 ** -0.5)) < 1e-5


def _shard(tiny_model):
    return LlamaShard(tiny_model, 1, torch.device("cpu"), torch.float32, backend="sdpa_masked", seed=0)


def test_split_step_equals_a_fused_step_over_the_same_layout(tiny_model):
    shard = _shard(tiny_model)
    comp = [(1, 6), (5, 3), (1, 2)]
    split_step = make_step(comp, "cpu", "split")             # lays the chunk out first
    ordered = [comp[i] for i in chunks_first(comp)]
    assert split_step.split is not None and split_step.batch.q_lens == (5, 1, 1)
    ids = torch.randint(0, 200, (7,), generator=torch.Generator().manual_seed(3))
    kv_split = shard.new_kv_cache(32)
    kv_fused = shard.new_kv_cache(32)
    kv_fused.k = [t.clone() for t in kv_split.k]
    kv_fused.v = [t.clone() for t in kv_split.v]
    split = shard.forward(ids, split_step, kv_split)
    fused = shard.forward(ids, make_step(ordered, "cpu"), kv_fused)
    assert torch.allclose(split, fused, atol=1e-5)
    with pytest.raises(ValueError, match="fused_varlen or split"):
        make_step(comp, "cpu", "packed_gqa")


@pytest.mark.parametrize("composition", [[(5, 3), (1, 7), (1, 2)], [(1, 4)] * 3, [(9, 0)]])
def test_piecewise_forward_equals_the_plain_forward_with_padding(tiny_model, composition):
    shard = _shard(tiny_model)
    step = make_step(composition, "cpu")
    n = step.batch.total_q
    ids = torch.randint(0, 200, (n,), generator=torch.Generator().manual_seed(4))
    capacity = step.batch.total_k
    kv_plain = shard.new_kv_cache(capacity + 1)
    kv_pieces = shard.new_kv_cache(capacity + 1)
    kv_pieces.k = [t.clone() for t in kv_plain.k]
    kv_pieces.v = [t.clone() for t in kv_plain.v]
    plain = shard.forward(ids, step, kv_plain)
    pieces = PiecewiseForward(shard, kv_pieces, max_tokens=16, scratch_row=capacity, graphs=False)
    assert pieces.capture_size(n) >= n and pieces.capture_size(n) in (1, 2, 4, 8, 16)

    def attend(layer, q):
        return step.attention("sdpa_masked", q, kv_pieces.k[layer][:capacity], kv_pieces.v[layer][:capacity],
                              shard.scale)

    hidden = pieces.forward(ids, step.positions, step.write_index, attend)
    logits = torch.nn.functional.linear(hidden.index_select(0, step.last_index), shard.lm_head)
    assert torch.allclose(logits, plain, atol=1e-4, rtol=1e-4)
    for layer in range(len(shard.layers)):   # same K/V written; padding went to the scratch row only
        assert torch.allclose(kv_pieces.k[layer][:capacity], kv_plain.k[layer][:capacity], atol=1e-5)


def test_piecewise_refuses_batches_past_its_largest_capture_size(tiny_model):
    shard = _shard(tiny_model)
    pieces = PiecewiseForward(shard, shard.new_kv_cache(8), max_tokens=8, scratch_row=7, graphs=False)
    with pytest.raises(ValueError, match="1..8 tokens"):
        pieces.capture_size(9)


def test_attention_probe_report_on_the_cpu_path(tmp_path):
    """The probe's bookkeeping on tiny shapes (CPU, sdpa backend): every timing recorded, the split
    launch checked against the reference, a kernel missing here reported as an error, not a crash."""
    import json

    from profiler.attention_probe import probe

    batches = [("chunk_with_decodes", [(9, 0), (1, 20), (1, 5)]), ("decodes_only", [(1, 7), (1, 30)])]
    report = probe(torch.device("cpu"), tmp_path / "probe.json", dtype=torch.float32, hq=4, hk=2, d=16,
                   log=lambda *_: None, backend="sdpa_masked", batches=batches, flex=False)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["checks"]["split"]["passed"] and saved["checks"]["fused_varlen"]["passed"]
    mixed = saved["batches"]["chunk_with_decodes"]
    assert mixed["fused_varlen_ms"] > 0 and mixed["split_prefill_launch_ms"] > 0 and mixed["split_decode_launch_ms"] > 0
    assert "split_prefill_launch_ms" not in saved["batches"]["decodes_only"]
    assert "fa3" in saved and report["seconds"] > 0
