"""Prefix caches (simulator/prefix_cache.py: vLLM V1's; simulator/radix_cache.py: SGLang's) and the policies
that use them: small hand-computed scenarios, then properties over random operation sequences.

Content is built by hand: request i's token sequence is keys[i] in units of `unit` tokens, so two requests
whose first k keys are equal share their first k x unit tokens.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simkit import linear, random_workload, run, token_times_ms

from policies import POLICIES
from simulator.content import TokenContent
from simulator.kv_cache import KVCache
from simulator.prefix_cache import PrefixCachingKV
from simulator.radix_cache import RadixCache
from simulator.request import RequestState


def content(unit, *keys) -> TokenContent:
    return TokenContent(unit, [np.asarray(k, np.int64) for k in keys])


def state(prompts, outputs, cont) -> RequestState:
    return RequestState.create(np.zeros(len(prompts)), prompts, outputs, 10_000, cont)


def cache(cls, num_blocks, block_size, requests) -> PrefixCachingKV:
    return cls(num_blocks, block_size, np.zeros(len(requests), np.int64), 0, requests)


# --- whole simulations -------------------------------------------------------------------------------


def test_a_shared_three_block_prefix_skips_48_prefill_tokens():
    # Blocks of 16; A and B have 64-token prompts whose first 48 tokens (3 blocks) are the same.
    # Iteration = 10 ms + 1 ms per prefill token + 2 ms per decode. A: 0-74 prefill 64 (first token at 74),
    # 74-86 decode. B arrives at 100 and finds 3 cached blocks: 100-126 prefill 16 (10 + 16), 126-138 decode.
    shared = content(16, [1, 2, 3, 4], [1, 2, 3, 9])
    out = run("vllm_v1", [0.0, 0.1], [64, 64], [2, 2], content=shared)
    assert token_times_ms(out, 0) == [74, 86]
    assert token_times_ms(out, 1) == [126, 138]
    assert list(out.records.cached_tokens) == [0, 48]
    assert list(out.iterations.num_prefill_tokens) == [64, 0, 16, 0]
    # A's 4 prompt blocks stay cached when it finishes (its fifth, partial, does not); B takes 3 back into
    # use, so 1 cached block is free when B's prefill starts.
    assert list(out.iterations.kv_blocks_cached) == [0, 0, 1, 1]
    assert out.prefix_cache == {"lookup_blocks": 8, "hit_blocks": 3, "evictions": 0}

    without = run(("vllm_v1", {"enable_prefix_caching": False}), [0.0, 0.1], [64, 64], [2, 2], content=shared)
    assert token_times_ms(without, 1) == [174, 186]  # 100-174: the whole 64-token prefill
    assert list(without.records.cached_tokens) == [0, 0]


def test_a_whole_cached_prompt_still_computes_its_last_token():
    # B's 64-token prompt is all cached, yet vLLM computes its last token again (for the logits), so the
    # hit stops a block short: 48 tokens cached, 16 computed. With a 65-token prompt, 64 are cached.
    same = content(16, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    out = run("vllm_v1", [0.0, 0.1], [64, 64], [1, 1], content=same)
    assert list(out.records.cached_tokens) == [0, 48]
    out = run("vllm_v1", [0.0, 0.1], [65, 65], [1, 1], content=same)
    assert list(out.records.cached_tokens) == [0, 64]
    assert token_times_ms(out, 1) == [112]  # 100-112: one query token, priced as a decode (10 + 2)


@pytest.mark.parametrize("policy", ["vllm", "sarathi", "sglang"])
def test_every_prefix_caching_policy_reuses_the_shared_blocks(policy):
    params = {"enable_prefix_caching": True}
    shared = content(16, [1, 2, 3, 4], [1, 2, 3, 9])
    out = run((policy, params), [0.0, 1.0], [64, 64], [2, 2], content=shared)
    assert list(out.records.cached_tokens) == [0, 48]
    prefill = out.iterations.num_prefill_tokens
    assert prefill[prefill > 0].sum() == 64 + 16


def test_without_content_nothing_is_cached_and_the_columns_are_there():
    from simulator import metrics

    out = run("vllm_v1", [0.0, 0.1], [64, 64], [2, 2])
    table = metrics.request_table(out.records)
    assert list(table["cached_tokens"]) == [0, 0] and list(table["prompt_tokens_computed"]) == [64, 64]
    summary = metrics.summarize(out.records, out.iterations, out.simulated_s, 0.0)
    assert summary["prefix_cache"] == {"cached_tokens": 0, "hit_rate_tokens": 0.0}
    assert list(metrics.iteration_table(out.iterations)["kv_blocks_cached"]) == [0, 0, 0, 0]


def test_the_summary_reports_hit_rates_and_evictions():
    from simulator import metrics

    shared = content(16, [1, 2, 3, 4], [1, 2, 3, 9])
    out = run("vllm_v1", [0.0, 0.1], [64, 64], [2, 2], content=shared)
    table = metrics.request_table(out.records)
    assert list(table["prompt_tokens_computed"]) == [64, 16]
    summary = metrics.summarize(out.records, out.iterations, out.simulated_s, 0.0)
    assert summary["prefix_cache"] == {"cached_tokens": 48, "hit_rate_tokens": 48 / 128}


# --- the block pool, by hand ---------------------------------------------------------------------------


def test_free_blocks_are_evicted_least_recently_freed_first_and_a_request_s_last_block_first():
    # 4 blocks of 4 tokens. Request 0 (8 tokens, 2 full blocks) takes blocks 0 and 1, which get cached; when
    # freed they join the free queue behind the never-used 2 and 3, last block first: [2, 3, 1, 0].
    req = state([8, 12], [1, 1], content(4, [1, 2], [7, 8, 9]))
    kv = cache(PrefixCachingKV, 4, 4, req)
    assert kv.allocate(0, 8)
    assert kv.blocks_of[0].tolist() == [0, 1] and kv.prefix_hit_blocks(0) == 2
    kv.free([0])
    assert kv.free_queue_order() == [2, 3, 1, 0] and kv.cached_free_blocks == 2
    # Request 1 needs 3 blocks: 2, 3, then 1, evicting request 0's second block and keeping its first.
    assert kv.allocate(1, 12)
    assert kv.blocks_of[1].tolist() == [2, 3, 1] and kv.evictions == 1
    assert kv.prefix_hit_blocks(0) == 1
    kv.check_invariants()


def test_reference_counts_share_a_block_and_free_it_once():
    req = state([9, 9], [1, 1], content(4, [1, 2, 3], [1, 2, 5]))
    kv = cache(PrefixCachingKV, 8, 4, req)
    assert kv.allocate(0, 9)  # blocks 0, 1 (cached), 2 (partial)
    assert kv.prefix_hit_tokens(1) == 8
    assert kv.allocate(1, 9)  # 0 and 1 shared, one new block
    assert kv.blocks_of[1].tolist() == [0, 1, 3]
    assert kv.ref_count[:4].tolist() == [2, 2, 1, 1] and kv.used_blocks == 4
    kv.free([0])
    assert kv.ref_count[:4].tolist() == [1, 1, 0, 1] and kv.free_blocks == 5 and kv.cached_free_blocks == 0
    kv.free([1])
    assert kv.free_blocks == 8 and kv.cached_free_blocks == 2
    kv.check_invariants()


def test_a_preempted_request_recomputes_only_what_its_cached_blocks_do_not_hold():
    # vllm_v1, blocks of 4. Request 0 (10-token prompt) prefills whole, emits a token, and is preempted: its
    # two full blocks stay cached. Rescheduled, it knows 11 tokens and finds 8 cached: it computes 3.
    req = state([10], [5], content(4, [1, 2, 3]))
    policy = POLICIES["vllm_v1"](KVCache(8, 4, np.zeros(1, np.int64)), req)
    policy.add_request(0)
    batch = policy.schedule(0.0)
    assert (batch.request_ids, batch.num_tokens) == ([0], [10])
    req.computed_tokens[0], req.generated_tokens[0] = 10, 1  # what the replica applies
    policy.preempt(0)
    assert policy.kv.cached_free_blocks == 2
    batch = policy.schedule(0.0)
    assert (batch.request_ids, batch.num_tokens) == ([0], [3])
    assert req.computed_tokens[0] == 8
    assert req.cached_tokens[0] == 0  # as vLLM reports: only the first admission's hit


def test_blocks_filled_while_decoding_are_cached_when_the_content_covers_the_output():
    # A multi-turn session: request 1's prompt is request 0's prompt and answer. Request 0 has a 4-token
    # prompt and emits 8 tokens (blocks of 4); its decodes fill blocks 1 and 2, which request 1 then hits.
    req = state([4, 13], [8, 1], content(4, [1, 2, 3], [1, 2, 3, 4]))
    kv = cache(PrefixCachingKV, 8, 4, req)
    assert kv.allocate(0, 4)
    for computed in range(4, 12):  # each decode step allocates room for its token
        assert kv.allocate_all([0], [computed + 1])
    kv.free([0])
    assert kv.prefix_hit_tokens(1) == 12


@pytest.mark.parametrize("cls", [PrefixCachingKV, RadixCache])
def test_prefix_hit_blocks_counts_the_leading_full_prompt_blocks_held_now(cls):
    # What a prefix-aware router asks every engine. Request 0 cached blocks [1, 2]; request 1's prompt
    # starts [1, 2, 3]: 2 blocks (its last token is no concern here); request 2 shares nothing.
    req = state([8, 12, 8], [1, 1, 1], content(4, [1, 2], [1, 2, 3], [5, 2]))
    kv = cache(cls, 8, 4, req)
    assert kv.allocate(0, 8)
    kv.free([0])
    recency = (kv.free_queue_order(), list(getattr(kv, "_last_used", [])))
    assert [kv.prefix_hit_blocks(r) for r in (0, 1, 2)] == [2, 2, 0]
    assert (kv.free_queue_order(), list(getattr(kv, "_last_used", []))) == recency  # no LRU change
    plain = KVCache(8, 4, np.zeros(3, np.int64))
    assert plain.prefix_hit_blocks(1) == 0 and plain.prefix_hit_tokens(1) == 0


# --- the radix cache -------------------------------------------------------------------------------------


def test_the_radix_cache_uses_uncached_blocks_before_evicting_where_vllm_evicts():
    # 4 blocks of 4 tokens. Request 0 caches 2 full blocks and leaves; request 1 (3 tokens, nothing to cache)
    # comes and goes; request 2 then needs 2 blocks. vLLM's free queue is [3, 1, 0, 2] by then: it evicts
    # request 0's last block. SGLang's radix cache takes the two blocks nothing caches.
    def evictions(cls):
        req = state([8, 3, 8], [1, 1, 1], content(4, [1, 2], [5], [6, 7]))
        kv = cache(cls, 4, 4, req)
        for r, tokens in ((0, 8), (1, 3)):
            assert kv.allocate(r, tokens)
            kv.free([r])
        assert kv.allocate(2, 8)
        kv.check_invariants()
        return kv.evictions, kv.prefix_hit_blocks(0)

    assert evictions(PrefixCachingKV) == (1, 1)
    assert evictions(RadixCache) == (0, 2)


def test_the_radix_cache_evicts_least_recently_used_leaves_and_keeps_shared_prefixes():
    # Requests 0 and 1 share their first block A and branch (B, C); request 1 ends later. Filling the cache
    # evicts B (the older leaf), then C, and only then A, which both branches hung from.
    req = state([8, 8, 4, 4, 4], [1] * 5, content(4, [1, 2], [1, 3], [10], [11], [12]))
    kv = cache(RadixCache, 3, 4, req)
    assert kv.allocate(0, 8) and kv.allocate(1, 8)  # A, B, C: the cache is full
    assert kv.blocks_of[1][0] == kv.blocks_of[0][0]
    kv.free([0])
    kv.free([1])
    a, b, c = kv.blocks_of.get(0, [0])[0], 1, 2
    for r, lost in ((2, b), (3, c), (4, a)):
        assert kv.allocate(r, 4)
        assert kv.blocks_of[r].tolist() == [lost]
        kv.check_invariants()
    assert kv.evictions == 3


def test_the_radix_cache_evicts_a_leaf_node_whole_as_sglang_does():
    # 6 blocks of 4 tokens. Request 0 caches A B C D in one insertion (one node) and leaves. Request 1 shares
    # A B and adds E: its match ends inside the node, which splits into [A B] and [C D], and E is a node of
    # its own under B. Request 1 leaves. Request 2 needs 2 blocks: the one never used, then one from the
    # least recently used leaf node, [C D], which goes whole (C becomes a free block caching nothing), as
    # SGLang frees a leaf node however few tokens it needs. A block at a time would have kept C cached.
    req = state([16, 12, 8], [1] * 3, content(4, [1, 2, 3, 4], [1, 2, 5], [7, 8]))
    kv = cache(RadixCache, 6, 4, req)
    assert kv.allocate(0, 16)
    kv.free([0])
    assert kv.prefix_hit_tokens(1) == 8
    assert kv.allocate(1, 12)
    kv.free([1])
    assert kv.allocate(2, 8)
    assert kv.evictions == 2
    assert kv.prefix_hit_blocks(0) == 2 and kv.prefix_hit_blocks(1) == 3  # [A B] and [E] stay
    assert kv.free_blocks == 4 and kv.cached_free_blocks == 3
    kv.check_invariants()


def test_sglang_lpm_admits_the_longest_cached_prefix_first():
    # Request 0 (3 full blocks of 4) ran and left its blocks cached. Waiting then: 1 shares nothing,
    # 2 shares 2 blocks, 3 shares 1. lpm admits 2, 3, 1; fcfs 1, 2, 3. Each computes what is not cached.
    def order(schedule_policy):
        req = state([12, 12, 12, 12], [1] * 4, content(4, [1, 2, 3], [7, 8, 9], [1, 2, 5], [1, 6, 6]))
        policy = POLICIES["sglang"](KVCache(32, 4, np.zeros(4, np.int64)), req, schedule_policy=schedule_policy)
        policy.add_request(0)
        policy.schedule(0.0)
        req.computed_tokens[0], req.generated_tokens[0] = 12, 1
        policy.kv.free([0])
        policy.finish([0])
        for r in (1, 2, 3):
            policy.add_request(r)
        batch = policy.schedule(0.0)
        return batch.request_ids, batch.num_tokens

    assert order("lpm") == ([2, 3, 1], [4, 8, 12])
    assert order("fcfs") == ([1, 2, 3], [12, 4, 8])


def test_sglang_preempts_the_request_with_the_fewest_output_tokens_then_the_longest_prompt():
    # retract_decode's order. Running in admission order 0, 1, 2; vLLM would preempt 2, the newest.
    req = state([10, 30, 20], [50, 50, 50], None)
    policy = POLICIES["sglang"](KVCache(64, 4, np.zeros(3, np.int64)), req)
    policy.running = [0, 1, 2]
    req.generated_tokens[:] = [1, 3, 2]
    assert policy.preemption_victim() == 0  # fewest output tokens, though the oldest
    req.generated_tokens[:] = [2, 2, 2]
    assert policy.preemption_victim() == 1  # all equal: the longest prompt
    req.prompt_tokens[:] = [20, 20, 20]
    assert policy.preemption_victim() == 2  # all equal: the newest


def test_sglang_runs_prefill_batches_apart_from_decodes_unless_mixed():
    # Iteration = 10 ms + 1 ms a prefill token + 2 ms a decode. A (8 tokens) prefills 0-18; B arrives at 5
    # and prefills alone 18-34 while A waits; then both decode 34-48.
    out = run("sglang", [0.0, 0.005], [8, 6], [3, 2])
    assert token_times_ms(out, 0) == [18, 48, 60]
    assert token_times_ms(out, 1) == [34, 48]
    # Mixed: B's prefill joins A's decode (18-36: 10 + 2 + 6).
    out = run(("sglang", {"enable_mixed_chunk": True}), [0.0, 0.005], [8, 6], [3, 2])
    assert token_times_ms(out, 0) == [18, 36, 50]
    assert token_times_ms(out, 1) == [36, 50]


def test_vllm_v1_chunks_prefills_under_one_token_budget():
    # Budget 8 tokens a step, running requests first. A (8-token prompt) prefills 0-18. B (12 tokens)
    # arrived at 5: 18-37 A's decode + B's first 7 tokens (10 + 2 + 7); 37-54 A's decode + B's last 5
    # (10 + 2 + 5): A is done, B emits; 54-66 B decodes.
    out = run(("vllm_v1", {"max_num_batched_tokens": 8}), [0.0, 0.005], [8, 12], [3, 2], predictor=linear())
    assert token_times_ms(out, 0) == [18, 37, 54]
    assert token_times_ms(out, 1) == [54, 66]
    assert list(out.iterations.num_prefill_tokens) == [8, 7, 5, 0]


def test_vllm_v1_defaults_follow_the_gpu():
    from simulator.config import load_hardware_config

    cls = POLICIES["vllm_v1"]
    assert cls.hardware_defaults(load_hardware_config("h100")) == {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
    assert cls.hardware_defaults(load_hardware_config("h200")) == {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
    assert cls.hardware_defaults(load_hardware_config("a100")) == {"max_num_batched_tokens": 2048, "max_num_seqs": 256}
    assert POLICIES["sglang"].hardware_defaults(load_hardware_config("h100")) == {"chunked_prefill_size": 8192}


def test_vllm_v1_schedules_ahead_when_its_engine_does_unless_the_config_says():
    from simulator.config import PolicyConfig
    from simulator.engine import load_engine_profile
    from simulator.parts import policy_parameters

    policy = PolicyConfig(name="vllm_v1")
    assert policy_parameters(policy, engine=load_engine_profile("vllm_v1"))["async_scheduling"] is True
    assert policy_parameters(policy, engine=load_engine_profile("vllm_v0"))["async_scheduling"] is False
    assert policy_parameters(policy, engine=load_engine_profile("servesim_execute"))["async_scheduling"] is False
    chosen = PolicyConfig(name="vllm_v1", params={"async_scheduling": False})
    assert policy_parameters(chosen, engine=load_engine_profile("vllm_v1"))["async_scheduling"] is False
    assert "async_scheduling" not in policy_parameters(PolicyConfig(name="sarathi"), engine=load_engine_profile("vllm_v1"))


def shared_prefix_workload(n, seed):
    """Random arrivals and lengths; each request starts with one of four 256-token texts, cut anywhere, and
    its content covers its output too (so decodes fill cacheable blocks)."""
    arrivals, prompts, outputs = random_workload(n, seed=seed, rate_qps=30)
    rng = np.random.default_rng(seed)
    keys = []
    for i, total in enumerate((prompts + outputs).tolist()):
        units = -(-total // 8)
        common = min(units, int(rng.integers(0, 33)))
        own = np.arange(units - common) + 1000 * (i + 1)
        keys.append(np.concatenate([np.arange(common) + 100_000 * int(rng.integers(1, 5)), own]))
    return arrivals, prompts, outputs, content(8, *keys)


@pytest.mark.parametrize("policy", [("vllm_v1", {"max_num_batched_tokens": 256}), ("sglang", {}),
                                    ("sglang", {"schedule_policy": "lpm", "enable_mixed_chunk": True}),
                                    ("sarathi", {"enable_prefix_caching": True}),
                                    ("vllm", {"enable_prefix_caching": True})], ids=str)
@pytest.mark.parametrize("kv_blocks", [10_000, 120], ids=["ample_kv", "tight_kv"])
def test_prefix_caching_runs_the_same_with_and_without_the_decode_run_fast_path(policy, kv_blocks):
    arrivals, prompts, outputs, shared = shared_prefix_workload(200, seed=3)
    fast, slow = (run(policy, arrivals, prompts, outputs, predictor=linear(kv_ms=0.01), kv_blocks=kv_blocks,
                      block_size=8, content=shared, fast_decode_runs=flag) for flag in (True, False))
    assert fast.records.cached_tokens.sum() > 0
    for name in ("first_token_s", "completed_s", "preemptions", "token_times_s", "cached_tokens"):
        assert np.array_equal(getattr(fast.records, name), getattr(slow.records, name)), name
    assert fast.prefix_cache == slow.prefix_cache
    produced = np.diff(fast.records.token_offsets)
    assert np.array_equal(produced[~fast.records.rejected], outputs[~fast.records.rejected])


# --- properties ------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data(), cls=st.sampled_from([PrefixCachingKV, RadixCache]))
def test_random_operations_keep_the_bookkeeping_consistent(data, cls):
    """Admissions (with hits), growth, decode runs, all-or-none growth and frees in any order: after each,
    reference counts match and are >= 0, no block is both free and referenced, cached-unreferenced + in use
    + free-uncached = capacity, and a refused allocation changes nothing."""
    block_size = data.draw(st.sampled_from([1, 2, 4]))
    num_blocks = data.draw(st.integers(1, 24))
    n = 8
    lengths = [data.draw(st.integers(1, 40)) for _ in range(n)]
    keys = [np.asarray([data.draw(st.integers(0, 2)) for _ in range(-(-length // 4))], np.int64)
            for length in lengths]
    req = RequestState.create(np.zeros(n), [max(1, x // 2) for x in lengths],
                              [max(1, x - x // 2) for x in lengths], 10_000, TokenContent(4, keys))
    kv = cache(cls, num_blocks, block_size, req)
    tokens = [0] * n  # what each request holds room for
    for _ in range(data.draw(st.integers(1, 40))):
        r = data.draw(st.integers(0, n - 1))
        action = data.draw(st.sampled_from(["allocate", "grow_all", "free", "decode_run"]))
        before = (list(kv.ref_count), kv.free_blocks, dict(kv.cached))
        if action == "allocate":
            want = min(tokens[r] + data.draw(st.integers(1, 12)), lengths[r])
            if tokens[r] == 0:
                hit = kv.prefix_hit_tokens(r)
                want = max(want, hit)
            if kv.allocate(r, want):
                if tokens[r] == 0 and hit:
                    req.computed_tokens[r] = min(hit, want // block_size * block_size)
                tokens[r] = want
            else:
                assert (list(kv.ref_count), kv.free_blocks, dict(kv.cached)) == before, "a refused allocation changed"
        elif action == "grow_all":
            ids = [i for i in range(n) if tokens[i]]
            if ids and kv.allocate_all(ids, [tokens[i] + 1 for i in ids]):
                for i in ids:
                    tokens[i] += 1
        elif action == "decode_run" and tokens[r]:
            steps, spare = kv.decode_run_steps([r], [tokens[r]], data.draw(st.integers(1, 6)))
            if steps and spare[0] >= 1:
                req.computed_tokens[r] = tokens[r] + steps - 1
                kv.take_decode_run_blocks([r], spare, steps - 1)
                tokens[r] += steps - 1
        elif action == "free":
            kv.free([r])
            tokens[r] = 0
            req.computed_tokens[r] = 0
        kv.check_invariants()
        assert kv.used_blocks + kv.free_blocks == kv.num_blocks
    kv.free(list(range(n)))
    kv.check_invariants()
    assert kv.free_blocks == num_blocks and kv.cached_free_blocks == len(kv.cached)
