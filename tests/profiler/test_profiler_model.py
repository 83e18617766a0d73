"""The model shard built from the profiler's ops: KV-cache continuation equals a full prefill."""
import torch

from profiler.model import LlamaShard, make_step


def test_step_layout_by_hand():
    s = make_step(((3, 2), (1, 4)), "cpu")
    assert s.positions.tolist() == [2, 3, 4, 4]
    assert s.write_index.tolist() == [2, 3, 4, 9]      # seq 0 owns slots 0..4, seq 1 slots 5..9
    assert s.last_index.tolist() == [2, 3]


def _shard(tiny_model):
    return LlamaShard(tiny_model, 1, torch.device("cpu"), torch.float32, backend="sdpa_masked", seed=0)


def test_chunked_prefill_and_decode_match_one_full_prefill(tiny_model):
    shard = _shard(tiny_model)
    ids = torch.randint(0, tiny_model.vocab_size, (12,), generator=torch.Generator().manual_seed(0))
    full = shard.forward(ids, make_step(((12, 0),), "cpu"), shard.new_kv_cache(32, fill_random=False))

    kv = shard.new_kv_cache(32, fill_random=True)         # garbage everywhere the steps do not write
    shard.forward(ids[:5], make_step(((5, 0),), "cpu"), kv)           # first chunk
    shard.forward(ids[5:11], make_step(((6, 5),), "cpu"), kv)         # second chunk over the 5 cached
    last = shard.forward(ids[11:], make_step(((1, 11),), "cpu"), kv)  # a decode over 11 cached
    assert torch.allclose(last, full, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(full).all()


def test_sequences_in_one_batch_do_not_see_each_other(tiny_model):
    shard = _shard(tiny_model)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 200, (7,), generator=g), torch.randint(0, 200, (4,), generator=g)
    together = shard.forward(torch.cat([a, b]), make_step(((7, 0), (4, 0)), "cpu"), shard.new_kv_cache(16))
    alone_a = shard.forward(a, make_step(((7, 0),), "cpu"), shard.new_kv_cache(16))
    alone_b = shard.forward(b, make_step(((4, 0),), "cpu"), shard.new_kv_cache(16))
    assert torch.allclose(together[0], alone_a[0], atol=1e-4) and torch.allclose(together[1], alone_b[0], atol=1e-4)


def test_step_samples_one_valid_token_per_sequence(tiny_model):
    shard = _shard(tiny_model)
    ids = torch.randint(0, 200, (9,), generator=torch.Generator().manual_seed(2))
    tokens = shard.step(ids, make_step(((8, 0), (1, 3)), "cpu"), shard.new_kv_cache(16))
    assert tokens.shape == (2,) and tokens.dtype == torch.long
    assert ((tokens >= 0) & (tokens < tiny_model.vocab_size)).all()
