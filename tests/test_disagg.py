"""Disaggregated serving: hand-computed timelines with the KV transfer, link sharing, decode back-pressure,
conservation of tokens, KV blocks and bytes across pools, and the config/CLI wiring.

Iteration time (linear predictor) = 10 ms + 1 ms per prefill token + 2 ms per decoding sequence. The link
moves 1 MB per ms (1 GB/s) after a 1 ms latency, and every prompt token's KV is 1 MB, so a prompt of n
tokens takes 1 + n ms to move. Prefill runs vLLM (whole prompts), decode runs Sarathi (decodes only).
Request A arrives at 0 with 8 prompt and 4 output tokens; B at 5 ms with 6 and 2.
"""
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "simulator"))
from scenarios import (
    BYTES_PER_TOKEN,
    HypothesisChoices,
    RngChoices,
    check_all,
    draw_scenario,
    simulate_scenario,
)
from simkit import linear, random_workload

from policies import POLICIES
from simulator.config import ConfigError, load_model_config
from simulator.disagg.cluster import LinkParts, PoolParts, simulate_disaggregated
from simulator.disagg.config import (
    LinkConfig,
    PoolConfig,
    parse_disagg,
    resolve_link,
    transfer_bytes_per_token,
)
from simulator.disagg.link import FairShareLink
from simulator.disagg.metrics import handoff_columns
from simulator.request import RequestState

MB = 1_000_000
ARRIVALS, PROMPTS, OUTPUTS = [0.0, 0.005], [8, 6], [4, 2]


def pool(policy="vllm", kv_blocks=10_000, replicas=1, stages=1, **params):
    return PoolParts(replicas, functools.partial(POLICIES[policy], **params), linear(stages=stages), kv_blocks)


def run(arrivals=ARRIVALS, prompts=PROMPTS, outputs=OUTPUTS, *, prefill=None, decode=None, latency_s=0.001,
        streaming_layers=0, **kwargs):
    requests = RequestState.create(np.asarray(arrivals, float), prompts, outputs, 100_000)
    return simulate_disaggregated(
        requests, prefill or pool("vllm"), decode or pool("sarathi", chunk_size=512),
        LinkParts(1e9, latency_s, streaming_layers), MB, kv_watermark=0.0, **kwargs)


def tokens_ms(out, r):
    rec = out.records
    return [round(t * 1e3, 6) for t in rec.token_times_s[rec.token_offsets[r]: rec.token_offsets[r + 1]]]


def ms(values):
    return [round(float(v) * 1e3, 6) for v in values]


def test_two_requests_hand_computed_with_transfer():
    # Prefill pool: 0-18 A (10+8); B queued at 5, 18-34 B (10+6). A's KV: 18 + 1 + 8 = 27; B's: 34 + 1 + 6 = 41.
    # Decode pool: 27-39 A (10+2); 39-51 A (B not there yet); B arrives at 41 and joins at 51:
    # 51-65 A + B (10+2x2): A's 4th token and B's 2nd (last).
    out = run()
    assert tokens_ms(out, 0) == [18, 39, 51, 65]
    assert tokens_ms(out, 1) == [34, 65]
    columns = handoff_columns(out.handoff)
    assert ms(columns["kv_transfer_s"]) == [9, 7]  # latency + bytes at the full link
    assert ms(columns["decode_wait_s"]) == [0, 0]
    assert ms(columns["kv_arrived_s"]) == [27, 41]
    assert columns["kv_transfer_bytes"].tolist() == [8 * MB, 6 * MB]
    assert columns["prefill_replica_id"].tolist() == [0, 0] and columns["decode_replica_id"].tolist() == [1, 1]
    # DistServe's convention: TTFT ends at the prefill, the transfer sits in the first inter-token gap.
    assert ms(out.records.first_token_s - out.records.arrived_s) == [18, 29]


def test_ttft_can_include_the_transfer():
    # Same run; the first token reaches the user when the KV reaches the decode replica: 27 and 41 ms.
    out = run(ttft_includes_transfer=True)
    assert ms(out.records.first_token_s - out.records.arrived_s) == [27, 36]
    assert tokens_ms(out, 0) == [27, 39, 51, 65]
    assert tokens_ms(out, 1) == [41, 65]


def test_concurrent_transfers_share_the_link():
    # Both arrive at 0 with 8-token prompts: one prefill batch 0-26 (10+16). Both transfers start at 26,
    # 1 ms latency, then 16 MB at 1 MB/ms shared: both arrive at 26 + 1 + 16 = 43 (not 35 and 43 as FIFO).
    # Decode 43-57 both (10+2x2).
    out = run(arrivals=[0.0, 0.0], prompts=[8, 8], outputs=[2, 2])
    assert tokens_ms(out, 0) == [26, 57] and tokens_ms(out, 1) == [26, 57]
    assert ms(handoff_columns(out.handoff)["kv_transfer_s"]) == [17, 17]
    (link,) = out.links
    assert link.max_concurrent == 2 and link.bytes_sent == 16 * MB and link.busy_ns == 16_000_000


def test_fair_share_link_staggered_transfers():
    # 10 MB starts at 0 on 1 MB/ms; 4 MB joins at 4 ms (6 MB left). Shared at 0.5 MB/ms, the 4 MB one ends
    # at 4 + 8 = 12 ms, when the first has 2 MB left; alone again it ends at 14 ms. Busy 14 ms for 14 MB.
    env = simpy.Environment()
    link = FairShareLink(env, 1e9)
    done = {}

    def transfer(name, start_ms, megabytes):
        yield env.timeout(start_ms * 1_000_000)
        yield from link.send(megabytes * MB)
        done[name] = env.now / 1e6

    env.process(transfer("big", 0, 10))
    env.process(transfer("small", 4, 4))
    env.run()
    assert done == {"big": 14.0, "small": 12.0}
    assert link.busy_ns == 14_000_000 and link.max_concurrent == 2


def test_full_decode_pool_holds_the_transfer_back():
    # The decode cache has one 16-token block: A (8 + 4 tokens) takes it; B must wait for A to finish.
    # A: prefill 0-18, KV at 27, decodes 27-39, 39-51, 51-63 (done, block freed). B: prefill 18-34, asks at
    # 34, gets the block at 63 (waited 29 ms), KV at 63 + 1 + 6 = 70, decodes 70-82.
    out = run(decode=pool("sarathi", kv_blocks=1, chunk_size=512))
    assert tokens_ms(out, 0) == [18, 39, 51, 63]
    assert tokens_ms(out, 1) == [34, 82]
    columns = handoff_columns(out.handoff)
    assert ms(columns["decode_wait_s"]) == [0, 29]
    assert ms(columns["kv_transfer_s"]) == [9, 7]


def test_prefill_kv_is_held_until_the_transfer_is_done():
    # Both caches have one block. A's prefill KV stays on the prefill replica until its transfer ends at 27,
    # so B (arrived at 5) is prefilled only at 27-43. B asks the decode pool at 43, gets A's block when A
    # finishes at 63, its KV lands at 70, it decodes 70-82.
    out = run(prefill=pool("vllm", kv_blocks=1), decode=pool("sarathi", kv_blocks=1, chunk_size=512))
    assert tokens_ms(out, 0) == [18, 39, 51, 63]
    assert tokens_ms(out, 1) == [43, 82]
    assert ms(out.records.first_scheduled_s) == [0, 27]
    assert ms(handoff_columns(out.handoff)["decode_wait_s"]) == [0, 20]


def test_layer_streaming_overlaps_the_transfer_with_the_prefill():
    # 4 layers. A's hand-off starts with its prefill at 0: 1 ms latency, 3/4 of 8 MB by 7 ms; its last layer
    # (2 MB) leaves at the prefill's end, 18. B's hand-off starts with B's prefill at 18; after its latency
    # (19) B's 4.5 MB streamed part shares the link with A's last MB: A's KV lands at 21, B's part at 24.5.
    # B's last 1.5 MB leaves at its prefill's end: 34-35.5. Decode: A 21-33, 33-45; B joins at 45: 45-59.
    out = run(streaming_layers=4)
    assert tokens_ms(out, 0) == [18, 33, 45, 59]
    assert tokens_ms(out, 1) == [34, 59]
    assert ms(handoff_columns(out.handoff)["kv_arrived_s"]) == [21, 35.5]


def test_one_output_token_requests_never_move():
    out = run(arrivals=[0.0], prompts=[8], outputs=[1])
    assert tokens_ms(out, 0) == [18]
    assert out.handoff.decode_replica_id.tolist() == [-1] and out.links[0].transfers == 0
    assert np.isnan(handoff_columns(out.handoff)["kv_transfer_s"][0])


def _check_conservation(out, requests_prompt, requests_output, bytes_per_token=MB):
    rec = out.records
    served = ~rec.rejected
    assert not np.isnan(rec.completed_s[served]).any()
    counts = np.diff(rec.token_offsets)
    assert (counts[served] == requests_output[served]).all()  # every token emitted exactly once
    for r in np.flatnonzero(served):  # tokens in time order, KV on the decode side before the 2nd token
        times = rec.token_times_s[rec.token_offsets[r]: rec.token_offsets[r + 1]]
        assert (np.diff(times) > 0).all()
        if len(times) > 1:
            assert out.handoff.transfer_done_ns[r] / 1e9 <= times[1]
    moved = out.handoff.transfer_done_ns >= 0
    assert (moved == (served & (requests_output > 1))).all()
    assert out.handoff.kv_bytes.sum() == requests_prompt[moved].sum() * bytes_per_token == sum(k.bytes_sent for k in out.links)
    for name, caches in out.kv_caches.items():  # every block came back, and no cache was ever over-full
        for cache in caches:
            assert cache.free_blocks == cache.num_blocks
            assert (cache.blocks_held == 0).all()
    iters = out.iterations
    for name, lo, hi in (("prefill", 0, out.pools["prefill"].num_replicas),
                         ("decode", out.pools["prefill"].num_replicas, len(out.links) + out.pools["decode"].num_replicas)):
        mine = (iters.replica_id >= lo) & (iters.replica_id < hi)
        replica_blocks = out.kv_blocks_per_engine[name] * out.pools[name].predictor.num_stages
        assert (iters.kv_blocks_used[mine] <= replica_blocks).all()
    return moved


def test_tokens_blocks_and_bytes_are_conserved_across_pools():
    arrivals, prompts, outputs = random_workload(300, seed=3, rate_qps=40.0)
    out = run(arrivals, prompts, outputs, prefill=pool("sarathi", replicas=2, chunk_size=256),
              decode=pool("sarathi", replicas=3, chunk_size=512), latency_s=0.0005)
    moved = _check_conservation(out, prompts, outputs)
    iters = out.iterations
    prefill_rows = iters.replica_id < 2
    # With ample KV nothing is preempted: prefill replicas compute each prompt once and decode nothing;
    # decode replicas compute each moved request's output tokens after the first, one at a time.
    assert out.records.preemptions.sum() == 0
    assert iters.num_prefill_tokens[prefill_rows].sum() == prompts.sum()
    assert iters.num_decode_tokens[prefill_rows].sum() == 0
    assert iters.num_prefill_tokens[~prefill_rows].sum() == 0
    assert iters.num_decode_tokens[~prefill_rows].sum() == (outputs[moved] - 1).sum()


def test_tight_memory_still_serves_everything_and_frees_every_block():
    # Small caches on both sides: hand-offs wait, prefills stall behind held KV, decodes get preempted.
    arrivals, prompts, outputs = random_workload(200, seed=5, rate_qps=60.0, max_prompt=300, max_output=80)
    out = run(arrivals, prompts, outputs, prefill=pool("vllm", kv_blocks=40),
              decode=pool("sarathi", replicas=2, kv_blocks=30, chunk_size=512), latency_s=0.0005)
    _check_conservation(out, prompts, outputs)
    assert (handoff_columns(out.handoff)["decode_wait_s"] > 0).any()


def test_pipeline_parallel_decode_pool():
    arrivals, prompts, outputs = random_workload(80, seed=7, rate_qps=30.0)
    out = run(arrivals, prompts, outputs, decode=pool("sarathi", stages=2, kv_blocks=200, chunk_size=512))
    _check_conservation(out, prompts, outputs)


# --- configuration ---------------------------------------------------------------------------------


def test_transfer_bytes_follow_the_decode_pool_sharding():
    model = load_model_config("llama-3-8b")  # 32 layers, 8 KV heads of 128: 128 KiB a token unsharded
    full = 2 * 32 * 8 * 128 * 2
    assert transfer_bytes_per_token(model, PoolConfig(tp=1)) == full
    assert transfer_bytes_per_token(model, PoolConfig(tp=2, pp=2)) == full  # shards add up
    assert transfer_bytes_per_token(model, PoolConfig(tp=16)) == 2 * full  # 16 GPUs, 8 heads: replicated


def test_link_presets_and_overrides():
    link = parse_disagg({"prefill": {}, "decode": {}, "link": {"preset": "infiniband"}}).link
    assert link.bandwidth_bytes_per_s == 45e9 and link.latency_s == 3e-5
    link = parse_disagg({"prefill": {}, "decode": {}, "link": {"preset": "ethernet", "latency_s": 0.5}}).link
    assert link.bandwidth_bytes_per_s == 10e9 and link.latency_s == 0.5
    assert resolve_link(LinkConfig(preset=None, bandwidth_gbytes_per_s=2.0, latency_s=0.0)).name == "custom"


@pytest.mark.parametrize("section, message", [
    ({"prefill": {}}, "cluster.disagg.decode is missing"),
    ({"prefill": {"tpp": 2}, "decode": {}}, "cluster.disagg.prefill: unknown field"),
    ({"prefill": {}, "decode": {}, "link": {"preset": None}}, "cluster.disagg.link.bandwidth_gbytes_per_s"),
    ({"prefill": {}, "decode": {}, "link": {"preset": "carrier_pigeon"}}, "unknown link 'carrier_pigeon'"),
    ({"prefill": {"policy": {"chunk_size": 512}}, "decode": {}}, r"cluster\.disagg\.prefill\.policy\.name is missing"),
    ({"prefill": {}, "decode": {"policy": {"name": "vllm", "chunk": 1}}}, r"cluster\.disagg\.decode\.policy: unknown"),
    ({"prefill": {"hardware": "h999"}, "decode": {}}, r"cluster\.disagg\.prefill\.hardware: unknown hardware 'h999'"),
])
def test_config_errors_name_the_field(section, message):
    with pytest.raises(ConfigError, match=message):
        parse_disagg(section)


def test_run_simulation_dispatches_on_cluster_disagg():
    from simulator.run import run_simulation

    base = {"model": "llama-3-8b", "hardware": "h100", "predictor": "linear",
            "workload": {"name": "f", "trace": None, "arrival": "fixed", "rate_qps": 4.0, "lengths": "uniform",
                         "min_tokens": 640, "max_tokens": 640, "num_requests": 20}}
    disagg = {"prefill": {"policy": {"name": "vllm"}, "hardware": "h100"},
              "decode": {"policy": {"name": "sarathi"}, "hardware": "h200", "tp": 2},
              "link": {"preset": "infiniband"}}
    result = run_simulation({**base, "cluster": {"disagg": disagg}})
    table = result.requests
    assert (table["decode_replica_id"] == 1).all() and (table["prefill_replica_id"] == 0).all()
    assert (table["kv_transfer_bytes"] == 512 * transfer_bytes_per_token(
        load_model_config("llama-3-8b"), PoolConfig(tp=2))).all()
    # 64 MiB over one InfiniBand port (decode tp=2 but prefill tp=1: one lane) plus its latency.
    assert table["kv_transfer_s"].min() == pytest.approx(3e-5 + 512 * 131072 / 45e9, abs=2e-9)
    setup = result.summary["setup"]
    assert setup["hardware"] == "h100/h200" and setup["num_gpus"] == 3 and setup["tp"] == "1/2"
    from simulator.run_header import setup_lines

    assert setup_lines(setup)[0] == ("model       llama-3-8b on 3 GPUs: prefill pool 1 replica of 1 h100 GPU "
                                     "(tp=1, pp=1), decode pool 1 replica of 2 h200 GPUs (tp=2, pp=1)")
    assert "predictor_build_s" in result.summary
    block = result.summary["disaggregation"]
    assert block["requests_moved"] == 20 and block["decode"]["num_gpus"] == 2
    colocated = run_simulation({**base, "cluster": {"num_replicas": 2}})
    assert "kv_transfer_s" not in colocated.requests and "disaggregation" not in colocated.summary


def test_fast_decode_runs_match_stepping():
    # Hand-offs arriving during runs of decodes advanced in one step land exactly where stepping puts them.
    arrivals, prompts, outputs = random_workload(150, seed=11, rate_qps=30.0)
    outs = [run(arrivals, prompts, outputs, decode=pool("sarathi", replicas=2, chunk_size=512), latency_s=0.0003,
                fast_decode_runs=fast) for fast in (True, False)]
    assert np.array_equal(outs[0].records.token_times_s, outs[1].records.token_times_s)
    assert np.array_equal(outs[0].handoff.kv_granted_ns, outs[1].handoff.kv_granted_ns)


def test_slo_attainment_counts_requests_meeting_both_targets():
    import pandas as pd

    from simulator.experiments.goodput import slo_attainment

    table = pd.DataFrame({  # meets both; TTFT miss; TPOT miss; one token (no TPOT); unfinished; rejected
        "ttft_s": [0.1, 0.3, 0.1, 0.1, 0.1, np.nan], "tpot_s": [0.02, 0.02, 0.03, np.nan, np.nan, np.nan],
        "completed_s": [1.0, 1.0, 1.0, 1.0, np.nan, np.nan], "output_tokens": [10, 10, 10, 1, 10, 10],
        "rejected": [False, False, False, False, False, True]})
    assert slo_attainment(table, ttft_max_s=0.25, tpot_max_s=0.025) == pytest.approx(2 / 6)
    assert slo_attainment(table, ttft_max_s=0.5, tpot_max_s=0.05) == pytest.approx(4 / 6)


# --- every shipped policy in either pool -----------------------------------------------------------

PARAMS = {"orca": {"max_batch_size": 8}, "faster_transformer": {"max_batch_size": 8}}
DECODE_POLICIES = sorted(n for n, cls in POLICIES.items() if not cls.reserves_full_length)


@pytest.mark.parametrize("policy", ["orca", "faster_transformer"])
def test_a_full_length_prefill_policy_rejects_what_it_could_never_admit(policy):
    # 26 blocks of 16 tokens: A's prompt (373 tokens, 24 blocks) fits, but the 443 tokens Orca reserves
    # for it (28 blocks) never do. A once waited forever; now it is rejected, and B is served.
    out = run([0.0, 0.001], [373, 100], [70, 10], prefill=pool(policy, kv_blocks=26, **PARAMS[policy]))
    assert out.records.reject_reason.tolist() == [
        "prompt + output tokens exceed one prefill KV cache (26 blocks of 16 tokens, less the watermark)", ""]
    assert np.diff(out.records.token_offsets).tolist() == [0, 10]
    # vLLM reserves only the prompt on the same prefill replica: it serves A.
    assert not run([0.0, 0.001], [373, 100], [70, 10], prefill=pool("vllm", kv_blocks=26)).records.rejected.any()


def test_every_policy_runs_in_some_pool_and_only_full_length_ones_are_refused_for_decoding():
    assert set(POLICIES) - set(DECODE_POLICIES) == {"orca", "faster_transformer"}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_policy_pair_serves_or_rejects_every_request(data):
    """Generated disaggregated scenarios (tests/simulator/scenarios.py: any policy pair with parameters from
    their tables, 1-2 replicas a pool, pp 1/2/4, tight caches on both sides, layer streaming or not, fast
    path on or off): hand-offs wait, decodes are preempted, and yet every request is served (each token
    once, every block returned, bytes conserved) or rejected with a reason, never left waiting forever."""
    check_pair(draw_scenario(HypothesisChoices(data), disaggregated=True))


@pytest.mark.parametrize("decode_policy", DECODE_POLICIES)
@pytest.mark.parametrize("prefill_policy", sorted(POLICIES))
def test_every_policy_pair_serves_or_rejects_every_request(prefill_policy, decode_policy):
    for seed in range(3):
        check_pair(draw_scenario(RngChoices(seed), disaggregated=True,
                                 policies={"prefill": prefill_policy, "decode": decode_policy}))


def check_pair(scenario):
    o = simulate_scenario(scenario)
    check_all(o)
    _check_conservation(o.out, o.prompts, o.outputs, BYTES_PER_TOKEN)


@pytest.mark.parametrize("policy", ["orca", "faster_transformer"])
def test_a_full_length_decode_policy_is_refused_with_the_reason(policy, nothing_runs):
    from simulator.run import run_simulation

    disagg = {"prefill": {"policy": {"name": "vllm"}}, "decode": {"policy": {"name": policy}}}
    choices = ", ".join(DECODE_POLICIES[:-1]) + f" or {DECODE_POLICIES[-1]}"
    with pytest.raises(ConfigError, match=rf"cluster\.disagg\.decode\.policy\.name='{policy}': {policy} reserves "
                                          rf"each request's full length .* use {choices} for the decode pool"):
        run_simulation({"model": "llama-3-8b", "hardware": "h100", "predictor": "linear",
                        "cluster": {"disagg": disagg}})
