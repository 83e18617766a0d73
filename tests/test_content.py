"""Token content keys -> block hashes: equal prefixes share hashes, different ones do not."""
import numpy as np
import pytest

from simulator.config import ConfigError
from simulator.content import TokenContent, block_hashes


def test_shared_prefix_shares_exactly_its_blocks():
    a, b = np.array([5, 6, 7, 8]), np.array([5, 6, 9, 8])
    ha, hb = block_hashes(a, 512, 16, 2048), block_hashes(b, 512, 16, 2048)
    assert len(ha) == 128  # 4 units of 512 tokens = 128 blocks of 16
    assert (ha[:64] == hb[:64]).all()
    assert (ha[64:] != hb[64:]).all()  # the chain differs after the first differing unit, also for unit 4


def test_only_full_covered_blocks_are_hashed():
    keys = np.array([1, 2])
    assert len(block_hashes(keys, 512, 16, 1000)) == 1000 // 16
    assert len(block_hashes(keys, 512, 16, 5000)) == 1024 // 16  # tokens past the keys are never shared
    assert len(block_hashes(keys, 512, 16, 10)) == 0


def test_blocks_spanning_several_units():
    keys = np.arange(100)
    h32 = block_hashes(keys, 16, 32, 1600)
    assert len(h32) == 50 and len(set(h32.tolist())) == 50
    other = keys.copy()
    other[3] = 999  # second unit of block 1
    h_other = block_hashes(other, 16, 32, 1600)
    assert h_other[0] == h32[0] and (h_other[1:] != h32[1:]).all()


def test_block_size_must_tile_units():
    TokenContent(512, []).check_block_size(16)
    TokenContent(16, []).check_block_size(32)
    with pytest.raises(ConfigError, match="cluster.block_size=24"):
        TokenContent(512, []).check_block_size(24)
