"""Pipeline parallelism: micro-batches in flight on both stages, bubbles from uneven batches."""
import numpy as np
from simkit import linear, run, token_times_ms


def test_two_stage_pipeline_timeline_and_bubbles():
    # pp = 2, each stage 10 ms + 1 ms/prefill token + 2 ms/decode. A (prompt 20) goes to virtual engine 0,
    # B (prompt 4) to engine 1; both emit 2 tokens.
    #   stage 0: A prefill 0-30, B prefill 30-44, idle until A returns at 60, A decode 60-72,
    #            idle until B returns at 74, B decode 74-86
    #   stage 1: A prefill 30-60, B prefill 60-74, A decode 74-86, B decode 86-98
    out = run("vllm", [0.0, 0.0], [20, 4], [2, 2], predictor=linear(stages=2))
    assert token_times_ms(out, 0) == [60, 86]
    assert token_times_ms(out, 1) == [74, 98]
    it = out.iterations
    start_ms, duration_ms = np.round(it.start_s * 1e3, 6).tolist(), np.round(it.duration_s * 1e3, 6).tolist()
    rows = sorted(zip(it.stage.tolist(), start_ms, duration_ms))
    assert rows == [(0, 0, 30), (0, 30, 14), (0, 60, 12), (0, 74, 12),
                    (1, 30, 30), (1, 60, 14), (1, 74, 12), (1, 86, 12)]
    # Stage 0 is busy 68 of the 86 ms until its last batch ends: 18 ms of bubbles (44-60 and 72-74).
    stage0 = it.stage == 0
    span = (it.start_s[stage0] + it.duration_s[stage0]).max() - it.start_s[stage0].min()
    assert round((span - it.duration_s[stage0].sum()) * 1e3, 6) == 18


def test_pipeline_engines_split_the_kv_cache():
    # 10 blocks of 4 tokens over pp = 2: each engine holds 5 blocks = 20 tokens, so a 24-token request is
    # rejected even though the replica has 40 token slots in all.
    out = run("vllm", [0.0, 0.0], [16, 10], [8, 4], predictor=linear(stages=2), kv_blocks=10, block_size=4)
    assert out.records.rejected.tolist() == [True, False]
    assert out.kv_blocks_per_engine == 5


def test_pipeline_with_many_requests_keeps_invariants():
    rng = np.random.default_rng(3)
    n = 80
    out = run(("sarathi", {"chunk_size": 64}), np.sort(rng.uniform(0, 1, n)), rng.integers(1, 200, n),
              rng.integers(1, 40, n), predictor=linear(stages=4), kv_blocks=400, block_size=8)
    r, it = out.records, out.iterations
    assert np.array_equal(np.diff(r.token_offsets), r.output_tokens)
    for stage in range(4):
        rows = it.stage == stage
        starts, ends = it.start_s[rows], it.start_s[rows] + it.duration_s[rows]
        assert np.all(starts[1:] >= ends[:-1] - 1e-12)  # one micro-batch per stage at a time
    # Every micro-batch passes through all four stages, in order.
    assert np.bincount(it.stage).tolist() == [np.sum(it.stage == 0)] * 4
