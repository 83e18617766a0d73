"""Two requests, known iteration times (linear predictor), exact expected token times for every policy.

Iteration time = 10 ms + 1 ms per prefill token + 2 ms per decoding sequence (+ 0.1 ms per KV token where
said). Request A arrives at 0 with an 8-token prompt and 4 output tokens; B arrives at 5 ms with a 6-token
prompt and 2 output tokens. The expected timelines are worked out by hand in each test's comment.
"""
import pytest
from simkit import linear, run, token_times_ms

ARRIVALS, PROMPTS, OUTPUTS = [0.0, 0.005], [8, 6], [4, 2]


def timelines(policy, **kwargs):
    out = run(policy, ARRIVALS, PROMPTS, OUTPUTS, **kwargs)
    return token_times_ms(out, 0), token_times_ms(out, 1), out


def test_vllm_prefills_first_and_pauses_decodes():
    # 0-18 prefill A (10+8). 18-34 prefill B alone (10+6): A's decode pauses. 34-48 decode A,B (10+2x2):
    # B done. 48-60, 60-72 decode A alone (10+2).
    a, b, out = timelines("vllm")
    assert a == [18, 48, 60, 72]
    assert b == [34, 48]
    # A's first gap is B's whole prefill plus a decode: vLLM's generation stall.
    assert out.records.first_scheduled_s[1] == pytest.approx(0.018)


def test_sarathi_chunks_prefills_and_never_stalls_decodes():
    # chunk_size 4. 0-14 A chunk 4 (10+4). 14-28 A chunk 4 -> A tok1. 28-43 A decode + B chunk 3 (10+2+3).
    # 43-58 A decode + B chunk 3 -> B tok1. 58-72 A, B decode (10+4): both done.
    a, b, _ = timelines(("sarathi", {"chunk_size": 4}))
    assert a == [28, 43, 58, 72]
    assert b == [58, 72]


def test_sarathi_with_a_large_chunk_prefills_whole_prompts():
    # chunk 512: 0-18 prefill A. 18-36 A decode + B prefill 6 (10+2+6). 36-50 A,B decode. 50-62 A.
    a, b, _ = timelines(("sarathi", {"chunk_size": 512}))
    assert a == [18, 36, 50, 62]
    assert b == [36, 50]


def test_orca_batches_whole_prefills_with_decodes():
    # Same schedule as a large chunk: B's whole prompt joins A's decode at 18 (10+2+6 = 18 ms).
    a, b, _ = timelines("orca")
    assert a == [18, 36, 50, 62]
    assert b == [36, 50]


def test_faster_transformer_makes_b_wait_for_the_whole_batch():
    # A runs alone to completion: 0-18 prefill, then 12 ms decodes: 30, 42, 54. B starts at 54:
    # 54-70 prefill (10+6), 70-82 decode.
    a, b, _ = timelines("faster_transformer")
    assert a == [18, 30, 42, 54]
    assert b == [70, 82]


def test_shortest_prompt_first_example():
    # Decodes first, then whole prefills: same as Orca for two requests.
    a, b, _ = timelines("shortest_prompt_first")
    assert a == [18, 36, 50, 62]
    assert b == [36, 50]


def test_shortest_prompt_first_lets_a_short_prompt_overtake():
    # A (prompt 8) runs; at 18 the queue holds C (prompt 50, arrived 1 ms) and B (prompt 6, arrived 2 ms).
    # max_num_batched_tokens 10: decode A (1) + B (6) fits, C (50) does not -> B overtakes C.
    out = run(("shortest_prompt_first", {"max_num_batched_tokens": 10}), [0.0, 0.001, 0.002], [8, 50, 6],
              [4, 2, 2])
    assert token_times_ms(out, 2)[0] == 36  # 18-36: A decode + B prefill (10+2+6)
    assert token_times_ms(out, 1)[0] > token_times_ms(out, 2)[0]


def test_kv_tokens_reach_the_predictor():
    # vLLM, both at 0, prompts 4 and 2, outputs 3 and 2, 0.1 ms per KV token:
    # 0-16 prefill (10+6, no KV yet). 16-30.6 decode (10+4 + 0.1x(4+2)). 30.6-43.1 A (10+2 + 0.1x5).
    out = run("vllm", [0.0, 0.0], [4, 2], [3, 2], predictor=linear(kv_ms=0.1))
    assert token_times_ms(out, 0) == [16, 30.6, 43.1]
    assert token_times_ms(out, 1) == [16, 30.6]


def test_latency_fields_follow_from_token_times():
    _a, _b, out = timelines("vllm")
    r = out.records
    assert r.first_token_s.tolist() == pytest.approx([0.018, 0.034])
    assert r.completed_s.tolist() == pytest.approx([0.072, 0.048])
    assert r.first_scheduled_s.tolist() == pytest.approx([0.0, 0.018])
    assert r.preemptions.tolist() == [0, 0]
    assert out.simulated_s == pytest.approx(0.072)
