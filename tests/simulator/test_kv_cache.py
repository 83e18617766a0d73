"""The paged KV cache: sizing from GPU memory, allocation, watermark, freeing, decode-run planning."""
import numpy as np
import pytest

from simulator.config import ClusterConfig, ConfigError, load_hardware_config, load_model_config
from simulator.kv_cache import KVCache, decode_run_blocks_used, kv_cache_blocks_per_gpu

GIB = 1024**3


def test_capacity_of_llama2_7b_on_h100_by_hand():
    model, h100 = load_model_config("llama-2-7b"), load_hardware_config("h100")
    # Weights: 32 layers x (qkv 4096*96*128 + out 32*128*4096 + mlp 3*4096*11008 + norms 2*4096)
    # + embeddings and LM head 2*32000*4096 = 6,738,411,520 parameters = 13,476,823,040 bytes.
    assert model.weight_bytes_per_gpu(1, 1) == 13_476_823_040
    # K and V, 32 layers, 32 heads of 128, 2 bytes: 524,288 bytes per token, 16 tokens a block.
    free_bytes = 0.9 * 79.65 * GIB - 13_476_823_040 - 2.0 * GIB
    assert kv_cache_blocks_per_gpu(model, h100, ClusterConfig()) == int(free_bytes // (16 * 524_288)) == 7313
    # The activation reserve is taken off: without it the cache is 2 GiB / 8 MiB = 256 blocks larger.
    assert kv_cache_blocks_per_gpu(model, h100, ClusterConfig(activation_reserve_gib=0)) == 7313 + 256


def test_tensor_and_pipeline_parallel_shards_hold_more_tokens():
    model, h100 = load_model_config("llama-3-70b"), load_hardware_config("h100")
    with pytest.raises(ConfigError, match="does not fit on h100 with cluster.tp=1"):
        kv_cache_blocks_per_gpu(model, h100, ClusterConfig())
    tp4 = kv_cache_blocks_per_gpu(model, h100, ClusterConfig(tp=4))
    tp4_pp2 = kv_cache_blocks_per_gpu(model, h100, ClusterConfig(tp=4, pp=2))
    assert 0 < tp4 < tp4_pp2  # half the layers per GPU: more than twice the blocks (weights halve too)
    assert tp4_pp2 > 2 * tp4


def new_cache(num_blocks=10, block_size=4, watermark=0, n=8):
    return KVCache(num_blocks, block_size, np.zeros(n, np.int64), watermark)


def test_allocate_grows_by_blocks_and_free_returns_them():
    kv = new_cache()
    assert kv.allocate(0, 5)  # 2 blocks
    assert kv.allocate(0, 8)  # still 2
    assert kv.used_blocks == 2
    assert kv.allocate(1, 32)  # 8 blocks: exactly full
    assert kv.free_blocks == 0
    assert not kv.allocate(0, 9)  # needs a third block: refused, nothing changes
    assert kv.blocks_held[0] == 2 and kv.free_blocks == 0
    kv.free(np.array([1]))
    assert kv.free_blocks == 8 and kv.blocks_held[1] == 0


def test_admission_keeps_the_watermark_free():
    kv = new_cache(num_blocks=10, watermark=2)
    assert not kv.allocate(0, 36, admission=True)  # 9 blocks would leave 1 < 2
    assert kv.allocate(0, 32, admission=True)  # 8 blocks leave 2
    assert kv.allocate(0, 40)  # growth may use the watermark
    assert kv.can_ever_hold(np.array([32, 33])).tolist() == [True, False]


def test_allocate_all_is_all_or_nothing():
    kv = new_cache(num_blocks=4)
    ids = np.array([0, 1, 2])
    assert kv.allocate_all(ids, np.array([4, 4, 4]))  # 3 blocks
    assert not kv.allocate_all(ids, np.array([5, 5, 4]))  # 2 more, 1 free
    assert kv.blocks_held[:3].tolist() == [1, 1, 1]


def test_decode_run_steps_stop_before_blocks_run_out():
    kv = new_cache(num_blocks=6, block_size=4)
    ids, kv_tokens = np.array([0, 1]), np.array([8, 8])
    kv.allocate_all(ids, kv_tokens + 1)  # step 1: 3 blocks each, 0 free
    steps, spare = kv.decode_run_steps(ids, kv_tokens.tolist(), max_steps=10)
    assert spare == [4, 4] and steps == 4  # step 5 needs token 13: a 4th block each
    kv2 = new_cache(num_blocks=7, block_size=4)
    kv2.allocate_all(ids, kv_tokens + 1)
    assert kv2.decode_run_steps(ids, kv_tokens.tolist(), 10)[0] == 4  # one free block is not enough for two
    assert kv2.decode_run_blocks(spare, 4) == 0 and kv2.decode_run_blocks(spare, 5) == 2
    kv2.take_decode_run_blocks(ids.tolist(), spare, 4)  # no new block: nothing changes
    assert kv2.blocks_held[:2].tolist() == [3, 3] and kv2.free_blocks == 1


def test_decode_run_blocks_used_matches_step_by_step_allocation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        block_size = int(rng.integers(1, 9))
        n = int(rng.integers(1, 6))
        kv = KVCache(10_000, block_size, np.zeros(n, np.int64))
        ids, tokens = np.arange(n), rng.integers(0, 50, n)
        kv.allocate_all(ids, tokens + 1)
        start_used, steps = kv.used_blocks, int(rng.integers(1, 40))
        _, spare = kv.decode_run_steps(ids, tokens.tolist(), steps)
        planned = KVCache(10_000, block_size, kv.blocks_held.copy())
        planned.free_blocks = kv.free_blocks
        expected = []
        for k in range(1, steps + 1):
            kv.allocate_all(ids, tokens + k)
            expected.append(kv.used_blocks)
        # Taking a whole run's blocks at once leaves the cache as stepping did.
        planned.take_decode_run_blocks(ids.tolist(), spare, steps)
        assert planned.blocks_held.tolist() == kv.blocks_held.tolist()
        assert planned.free_blocks == kv.free_blocks
        got = decode_run_blocks_used(np.array([start_used]), spare, np.array([n]), np.array([steps]),
                                     block_size)
        assert got.tolist() == expected


def test_capacity_tokens_and_lists_or_arrays_alike():
    kv = new_cache(num_blocks=10, block_size=4)
    assert kv.allocate_all([0, 1], [5, 1])  # lists: 2 blocks and 1 block
    assert kv.capacity_tokens([0, 1, 2]) == [8, 4, 0]
    assert kv.allocate_all(np.array([1, 2]), np.array([8, 3]))  # int arrays: one more block each
    assert kv.capacity_tokens([1, 2]) == [8, 4] and kv.free_blocks == 5
    assert isinstance(kv.free_blocks, int)  # Python ints throughout, whatever the caller passed
    kv.free([0])
    kv.free(np.array([1, 2]))
    assert kv.free_blocks == 10 and kv.blocks_held.tolist() == [0] * 8


def test_a_copied_or_unpickled_cache_keeps_its_own_blocks():
    import copy
    import pickle

    kv = new_cache(num_blocks=10, block_size=4)
    kv.allocate(0, 5)
    for twin in (copy.deepcopy(kv), pickle.loads(pickle.dumps(kv))):
        assert twin.allocate(1, 8) and twin.capacity_tokens([0, 1]) == [8, 8] and twin.free_blocks == 6
        assert kv.blocks_held[1] == 0 and kv.free_blocks == 8  # the original is untouched
