"""Preemption by recompute when the paged KV cache runs out, and the preempted request's exact restart."""
import numpy as np
from simkit import run, token_times_ms


def test_vllm_preempts_the_newest_request_and_recomputes_it():
    # Block size 4, 6 blocks. A and B arrive at 0: prompts 8, outputs 6. 10 ms + 1 ms/prefill token
    # + 2 ms/decode.
    # 0-26 prefill both (2 blocks each). Decodes at 26, 40, 54, 68 -> tokens 2..5 at 40, 54, 68, 82 (a third
    # block each at 26). At 82 both need a 4th block, none is free: B (newest) is preempted, A decodes alone:
    # 82-94, A done. At 94 B recomputes prompt + 5 generated = 13 tokens (10+13 = 23 ms) and emits its 6th
    # at 117.
    out = run("vllm", [0.0, 0.0], [8, 8], [6, 6], kv_blocks=6, block_size=4)
    assert token_times_ms(out, 0) == [26, 40, 54, 68, 82, 94]
    assert token_times_ms(out, 1) == [26, 40, 54, 68, 82, 117]
    assert out.records.preemptions.tolist() == [0, 1]
    it = out.iterations
    assert it.kv_blocks_used.max() == 6
    # The recompute is one prefill iteration of 13 tokens.
    assert it.num_prefill_tokens[-1] == 13 and it.duration_s[-1] == np.float64(0.023)


def test_sarathi_preempts_and_every_request_still_finishes_with_all_tokens():
    prompts, outputs = [30, 30, 30, 30], [40, 40, 40, 40]
    out = run(("sarathi", {"chunk_size": 64}), [0.0] * 4, prompts, outputs, kv_blocks=20, block_size=8)
    r = out.records
    assert r.preemptions.sum() > 0
    assert np.array_equal(np.diff(r.token_offsets), outputs)
    assert np.all(np.isfinite(r.completed_s))
    assert out.iterations.kv_blocks_used.max() <= 20
    # A preempted request keeps the tokens it had emitted: its token times stay increasing across the restart.
    for i in np.flatnonzero(r.preemptions):
        assert np.all(np.diff(r.token_times_s[r.token_offsets[i]: r.token_offsets[i + 1]]) > 0)


def test_orca_reserves_full_length_and_never_preempts():
    # Each request reserves ceil((30+40)/8) = 9 blocks; 20 blocks hold two at a time.
    out = run("orca", [0.0, 0.0, 0.0, 0.0], [30] * 4, [40] * 4, kv_blocks=20, block_size=8)
    assert out.records.preemptions.sum() == 0
    assert out.iterations.batch_size.max() == 2
    assert out.iterations.kv_blocks_used.max() == 18
