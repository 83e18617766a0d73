"""servesim's RadixCache against SGLang's own (v0.5.23), request by request.

bench/sglang_radix_check.py ran SGLang's RadixCache on a CPU through the admissions and finishes of
simulator.decision_scenarios.radix_hits and saved the tokens each request found cached
(data/validation/scheduler/sglang_radix/). Here servesim's cache goes through the same protocol and must
find the same, with room for everything and under KV pressure, where both evict a least recently used
leaf node whole (a run of blocks one insertion added, split where another branches off or a match ends).
"""
import pandas as pd
import pytest

from simulator.decision_scenarios import SAVED_RADIX, SCENARIOS, radix_hits

SAVED = pd.read_csv(f"{SAVED_RADIX}/hits.csv")


def sglang_hits(num_blocks: int) -> list[int]:
    return SAVED[SAVED.num_blocks == num_blocks].sort_values("request").hit_tokens_sglang.tolist()


def test_with_room_for_everything_every_request_finds_what_sglang_finds():
    ours, evicted = radix_hits(SCENARIOS["mooncake-ample"], 40_000, 1)
    assert evicted == 0
    assert ours == sglang_hits(40_000)
    assert sum(ours) > 0


@pytest.mark.parametrize("num_blocks", [9669, 6000])
def test_under_kv_pressure_every_request_finds_what_sglang_finds(num_blocks):
    ours, evicted = radix_hits(SCENARIOS["mooncake-ample"], num_blocks, 1)
    assert evicted > 0
    assert ours == sglang_hits(num_blocks)
