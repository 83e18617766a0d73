"""Scenarios on which servesim's `vllm_v1` policy is compared with vLLM's own V1 scheduler, decision by
decision (bench/vllm_v1_decisions.py runs vLLM's; tests/policies/test_vllm_v1_decisions.py checks the policy
against the decisions vLLM made, saved in data/validation/scheduler/vllm_v1/), and servesim's radix cache
with SGLang's (`radix_hits`, bench/sglang_radix_check.py).

Each scenario is a workload with shared prefixes, arrivals as step numbers and one scheduler setting:
ample or tight KV cache (evictions, preemptions), the H100's and the A100's token budgets, prefix caching
on or off. Token ids follow the workload's content (requests sharing their first k blocks have the same
first k x block_size tokens); every other token, outputs included, is unique to its request and place.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from policies import POLICIES
from simulator.execute.prefix_rows import ContentTokens
from simulator.kv_cache import KVCache
from simulator.request import RequestState
from simulator.stepping import StepLog, run_steps
from simulator.workload import load_workload, load_workload_config

SAVED = "data/validation/scheduler/vllm_v1"  # vLLM's decisions (bench/vllm_v1_decisions.py --save)
SAVED_ASYNC = f"{SAVED}/async"  # its AsyncScheduler's (--async-scheduling --save)
MOONCAKE_SLICE = "data/validation/h100/fidelity_prefix/mooncake_slice.jsonl.gz"  # 52 whole conversations
BLOCK_SIZE = 16
MAX_MODEL_LEN = 131072  # Llama-3.1-8B
# Token ids: the content's below 2**31, unique ones above (never equal to a content token).
CONTENT_VOCAB = 2**31 - 1
UNIQUE_BASE = 2**40


@dataclass(frozen=True)
class Scenario:
    name: str
    workload: str  # "mooncake_slice" (52 requests) or "multiturn" (synthetic chat sessions)
    mean_gap_steps: float  # mean steps between arrivals (exponential gaps, seeded)
    num_blocks: int
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    long_prefill_token_threshold: int = 0
    enable_prefix_caching: bool = True
    max_output_tokens: int = 128
    num_requests: int = 52
    seed: int = 0

    def describe(self) -> dict:
        return asdict(self)


SCENARIOS = {s.name: s for s in (
    # The prefix fidelity plan's cache (0.45 of an H100: 9,669 blocks), requests every 40 steps.
    Scenario("mooncake-ample", "mooncake_slice", 40.0, 9669),
    # 6,000 blocks (96k tokens, just above the longest prompt) and requests every 8 steps: evictions and
    # preemptions.
    Scenario("mooncake-tight", "mooncake_slice", 8.0, 6000),
    Scenario("mooncake-tight-nocache", "mooncake_slice", 8.0, 6000, enable_prefix_caching=False),
    # vLLM's A100 defaults (2048 tokens, 256 sequences) with long prefills capped at 512 tokens a step.
    Scenario("mooncake-a100-threshold", "mooncake_slice", 20.0, 9669, max_num_batched_tokens=2048,
             max_num_seqs=256, long_prefill_token_threshold=512),
    # Synthetic chat sessions (shared system prompts, turns resending the conversation, answers included),
    # a small cache and a small sequence limit.
    Scenario("multiturn-small", "multiturn", 3.0, 2500, max_num_batched_tokens=1024, max_num_seqs=16,
             max_output_tokens=256, num_requests=300),
)}


def _workload(s: Scenario):
    if s.workload == "mooncake_slice":
        cfg = load_workload_config("mooncake_conversation", trace=MOONCAKE_SLICE, arrival="poisson", rate_qps=1.0,
                                   shuffle_rows=False, max_output_tokens=s.max_output_tokens,
                                   num_requests=s.num_requests)
    elif s.workload == "multiturn":
        cfg = load_workload_config("multiturn_chat", num_requests=s.num_requests,
                                   max_output_tokens=s.max_output_tokens)
    else:
        raise ValueError(f"unknown scenario workload {s.workload!r}")
    return load_workload(cfg, s.seed)


def build(s: Scenario) -> tuple[RequestState, np.ndarray, dict]:
    """The scenario's requests, arrival steps and `vllm_v1` parameters (KV: s.num_blocks of BLOCK_SIZE)."""
    workload = _workload(s)
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   MAX_MODEL_LEN, workload.content)
    rng = np.random.default_rng(s.seed)
    arrival_step = np.floor(np.cumsum(rng.exponential(s.mean_gap_steps, len(workload)))).astype(np.int64)
    arrival_step -= arrival_step[0]
    params = {"max_num_batched_tokens": s.max_num_batched_tokens, "max_num_seqs": s.max_num_seqs,
              "long_prefill_token_threshold": s.long_prefill_token_threshold,
              "enable_prefix_caching": s.enable_prefix_caching}
    return requests, arrival_step, params


def token_ids(requests: RequestState, request_id: int, length: int) -> np.ndarray:
    """The request's first `length` token ids: the content's where it is known, unique ones elsewhere."""
    positions = np.arange(length, dtype=np.int64)
    ids = ContentTokens(requests, BLOCK_SIZE).token_ids(request_id, positions, CONTENT_VOCAB)
    unknown = ids < 0
    ids[unknown] = UNIQUE_BASE + request_id * 2**21 + positions[unknown]
    return ids


def our_log(s: Scenario, async_scheduling: bool = False) -> StepLog:
    """The `vllm_v1` policy's decisions on the scenario (scheduling as vLLM's engine does with
    `async_scheduling`, a step ahead of the tokens)."""
    requests, arrival_step, params = build(s)
    kv = KVCache(s.num_blocks, BLOCK_SIZE, np.zeros(len(requests), np.int64))
    policy = POLICIES["vllm_v1"](kv, requests, **params, async_scheduling=async_scheduling)
    return run_steps(policy, arrival_step)


# The saved logs: one gzipped CSV per kind of row, columns as StepLog describes them.
LOG_COLUMNS = {"scheduled": ["step", "request", "tokens"], "admitted": ["step", "request", "cached_tokens"],
               "preempted": ["step", "request"]}


def save_log(log: StepLog, name: str, directory: Path | str = SAVED) -> None:
    """Write a scheduler's decisions on scenario `name` (byte-stable: the same decisions, the same files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for kind, columns in LOG_COLUMNS.items():
        csv = pd.DataFrame(getattr(log, kind), columns=columns).to_csv(index=False).encode()
        with gzip.GzipFile(directory / f"{name}.{kind}.csv.gz", "wb", compresslevel=9, mtime=0) as f:
            f.write(csv)


def saved_log(name: str, directory: Path | str = SAVED) -> StepLog:
    """vLLM's decisions on scenario `name`, as bench/vllm_v1_decisions.py saved them (save_log)."""
    directory = Path(directory)

    def rows(kind: str) -> list[tuple]:
        return list(pd.read_csv(directory / f"{name}.{kind}.csv.gz").itertuples(index=False, name=None))

    steps = json.loads((directory / "comparison.json").read_text())["comparison"][name]["theirs"]["steps"]
    return StepLog(rows("scheduled"), rows("admitted"), rows("preempted"), steps)


# --- SGLang's radix cache, cache against cache --------------------------------------------------------
# bench/sglang_radix_check.py drives SGLang's own RadixCache (a CPU object) and servesim's RadixCache through
# the same admissions and finishes, `window` requests at a time in arrival order: each is admitted (its
# cached prefix matched and taken, its prompt allocated and cached), then each of them finishes (its output
# allocated, everything it computed cached, its blocks released). The hits per request are compared.
SAVED_RADIX = "data/validation/scheduler/sglang_radix"


def radix_hits(s: Scenario, num_blocks: int, window: int) -> tuple[list[int], int]:
    """servesim's RadixCache on the protocol above: the tokens each request finds cached, and the blocks
    evicted. The scenario's scheduler settings are not used (no scheduler runs)."""
    from simulator.radix_cache import RadixCache

    requests, _, _ = build(s)
    ints = requests.ints
    n = len(ints.prompt_tokens)
    cache = RadixCache(num_blocks, BLOCK_SIZE, np.zeros(n, np.int64), 0, requests)
    hits = []
    for start in range(0, n, window):
        group = range(start, min(n, start + window))
        for r in group:
            prompt = int(ints.prompt_tokens[r])
            hits.append(cache.prefix_hit_tokens(r))
            if not cache.allocate(r, prompt):
                raise ValueError(f"{s.name}: request {r}'s prompt does not fit {num_blocks} blocks")
            ints.computed_tokens[r], ints.generated_tokens[r] = prompt, 1
        for r in group:
            computed = int(ints.prompt_tokens[r] + ints.output_tokens[r]) - 1  # the last token is not computed
            if not cache.allocate(r, computed):
                raise ValueError(f"{s.name}: request {r}'s output does not fit {num_blocks} blocks")
            ints.computed_tokens[r], ints.generated_tokens[r] = computed, ints.output_tokens[r]
            cache.free([r])
    return hits, int(cache.evictions)
