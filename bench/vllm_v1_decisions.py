"""servesim's `vllm_v1` policy against vLLM's own V1 scheduler, decision by decision, on a CPU.

vLLM's scheduler (vllm/v1/core/sched/scheduler.py and its KV cache manager) is plain Python: it runs
without a GPU when handed a KV cache size and, after each step, what the model "sampled". Both schedulers
get the same requests (token ids that follow the workload's content, so prefixes shared in the workload
are shared token for token), the same arrivals (request i joins before step `arrival_step[i]`), the same
token budget, sequence limit and KV blocks, and each step's batch is computed at once
(simulator/stepping.py). Compared per step: which requests run and how many tokens each computes, the
tokens each request finds cached when it is scheduled from the waiting queue, and the preemptions.

    python bench/vllm_v1_decisions.py                      # compare every scenario, print a table
    python bench/vllm_v1_decisions.py --save data/validation/scheduler/vllm_v1   # also write vLLM's logs
    python bench/vllm_v1_decisions.py --async-scheduling --save data/validation/scheduler/vllm_v1
                      # vLLM's AsyncScheduler (its engine's default) against the policy's async_scheduling

Needs vLLM, best in its own virtual environment (it pins its own torch); its scheduler runs on a machine
without a GPU:

    python -m venv .venv-vllm && .venv-vllm/bin/pip install -e . vllm==0.33.0
    .venv-vllm/bin/python bench/vllm_v1_decisions.py

The saved logs let tests/policies/test_vllm_v1_decisions.py check the policy against vLLM's decisions
without vLLM installed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.decision_scenarios import BLOCK_SIZE, SCENARIOS, Scenario, build, our_log, save_log, token_ids
from simulator.stepping import StepLog, compare_logs


@dataclass
class VllmSide:
    """vLLM's scheduler over a scenario's requests. With `async_scheduling` (vLLM's default in its engine),
    the engine schedules step N+1 before it has step N's sampled tokens (a queue of two batches), as
    EngineCore.step_with_batch_queue does (compared with the policy's `async_scheduling`)."""

    scenario: Scenario
    async_scheduling: bool = False

    def run(self) -> tuple[StepLog, str]:
        import torch
        import vllm
        from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.outputs import ModelRunnerOutput
        from vllm.v1.request import Request
        from vllm.v1.structured_output import StructuredOutputManager

        s = self.scenario
        requests, arrival_step, params = build(s)
        block_size = BLOCK_SIZE
        model_dir = _model_dir(requests.max_model_len)
        vc = VllmConfig(
            scheduler_config=SchedulerConfig(
                max_num_seqs=params["max_num_seqs"], max_num_batched_tokens=params["max_num_batched_tokens"],
                max_model_len=requests.max_model_len, enable_chunked_prefill=True, is_encoder_decoder=False,
                long_prefill_token_threshold=params["long_prefill_token_threshold"],
                async_scheduling=self.async_scheduling),
            model_config=ModelConfig(model=str(model_dir), skip_tokenizer_init=True, dtype="bfloat16",
                                     max_model_len=requests.max_model_len),
            cache_config=CacheConfig(block_size=block_size, enable_prefix_caching=params["enable_prefix_caching"]),
            device_config=DeviceConfig(device="cpu"))
        # vLLM keeps one block aside as its null block (never handed out): one more gives it the same usable
        # blocks as the policy.
        num_blocks = s.num_blocks + 1
        vc.cache_config.num_gpu_blocks = num_blocks
        spec = FullAttentionSpec(block_size=block_size, num_kv_heads=8, head_size=128, dtype=torch.bfloat16)
        kv_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                                  kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
        scheduler_class = AsyncScheduler if self.async_scheduling else Scheduler
        scheduler = scheduler_class(vllm_config=vc, kv_cache_config=kv_config,
                                    structured_output_manager=StructuredOutputManager(vc), block_size=block_size)
        init_none_hash(sha256)
        hasher = get_request_block_hasher(block_size, sha256)
        ints = requests.ints
        n = len(arrival_step)
        tokens = {}  # request -> every token id it will ever hold (prompt, then the outputs it samples)
        num_sampled = defaultdict(int)
        in_flight: deque = deque()  # (scheduler output, request ids, sampled tokens) not yet returned
        log = StepLog()
        next_arrival = 0
        finished = 0

        def read_oldest() -> None:
            """Hand the scheduler the oldest batch in flight's sampled tokens."""
            nonlocal finished
            done_out, done_ids, done_sampled = in_flight.popleft()
            before = set(scheduler.requests)
            scheduler.update_from_output(done_out, ModelRunnerOutput(
                req_ids=done_ids, req_id_to_index={rid: i for i, rid in enumerate(done_ids)},
                sampled_token_ids=done_sampled))
            finished += len(before - set(scheduler.requests))

        for step in range(1_000_000):
            while next_arrival < n and arrival_step[next_arrival] <= step:
                r = next_arrival
                length = int(ints.prompt_tokens[r] + ints.output_tokens[r])
                tokens[r] = token_ids(requests, r, length)
                scheduler.add_request(Request(
                    request_id=str(r), prompt_token_ids=tokens[r][:ints.prompt_tokens[r]].tolist(),
                    sampling_params=SamplingParams(max_tokens=int(ints.output_tokens[r]), ignore_eos=True),
                    pooling_params=None, block_hasher=hasher))
                next_arrival += 1
            if finished == n:
                log.steps = step
                return log, vllm.__version__
            waiting = {req.request_id for req in scheduler.waiting}
            out = scheduler.schedule()
            # Having scheduled nothing, the engine waits for the batch in flight, reads its tokens and
            # schedules again: no step runs on the GPU in between, so none is counted.
            while not out.num_scheduled_tokens and in_flight:
                log.preempted += [(step, int(r)) for r in sorted(out.preempted_req_ids or (), key=int)]
                read_oldest()
                if finished == n:  # the last tokens read: this step never runs
                    log.steps = step
                    return log, vllm.__version__
                out = scheduler.schedule()
            log.preempted += [(step, int(r)) for r in sorted(out.preempted_req_ids or (), key=int)]
            ids, sampled = [], []
            for rid, num in out.num_scheduled_tokens.items():
                req = scheduler.requests[rid]
                r = int(rid)
                log.scheduled.append((step, r, int(num)))
                if rid in waiting:
                    log.admitted.append((step, r, int(req.num_computed_tokens - num)))
                ids.append(rid)
                # A request that computes its last known token samples the next one: the content's token.
                if self.async_scheduling:  # known tokens include the placeholders of batches in flight
                    samples = not req.is_prefill_chunk
                else:
                    samples = req.num_computed_tokens >= req.num_tokens
                sampled.append([int(tokens[r][ints.prompt_tokens[r] + num_sampled[r]])] if samples else [])
                num_sampled[r] += samples
            if ids:
                in_flight.append((out, ids, sampled))
            # The synchronous engine waits for every batch; the asynchronous one keeps two in flight.
            while len(in_flight) > (1 if self.async_scheduling else 0):
                read_oldest()
        raise RuntimeError(f"{s.name}: vLLM left requests unfinished")


def _model_dir(max_model_len: int) -> Path:
    """A Llama-3.1-8B config.json (the model's shapes; no weights): vLLM's ModelConfig reads one."""
    out = Path(".cache/vllm_decisions/llama-3.1-8b")
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": max(131072, max_model_len),
              "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "hidden_act": "silu",
              "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
              "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _directory(args) -> Path:
    """Where --save writes: the synchronous scheduler's logs in the directory given, the asynchronous
    one's in its `async` folder."""
    return args.save / "async" if args.async_scheduling else args.save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated names")
    parser.add_argument("--save", type=Path, help="write vLLM's step logs and the comparison here")
    parser.add_argument("--async-scheduling", action="store_true",
                        help="drive vLLM's AsyncScheduler as its engine does by default (two batches in flight) "
                             "against the policy with async_scheduling; --save then writes into <save>/async")
    args = parser.parse_args(argv)
    results = {}
    version = None
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        t = time.perf_counter()
        theirs, version = VllmSide(scenario, args.async_scheduling).run()
        vllm_s = time.perf_counter() - t
        result = compare_logs(our_log(scenario, args.async_scheduling), theirs)
        results[name] = result
        print(f"{name:24s} steps {result['steps_identical']:>6,} of {result['steps']:>6,} identical "
              f"(first difference: {result['first_difference_step']}); cached tokens ours "
              f"{result['ours']['cached_tokens']:,} vLLM {result['theirs']['cached_tokens']:,}; preemptions "
              f"{result['ours']['preemptions']} / {result['theirs']['preemptions']}; vLLM {vllm_s:.1f} s", flush=True)
        if args.save:
            save_log(theirs, name, _directory(args))
    if args.save:
        flag = " --async-scheduling" if args.async_scheduling else ""
        meta = {"vllm": version, "scheduler": "AsyncScheduler" if args.async_scheduling else "Scheduler",
                "made_by": f"python bench/vllm_v1_decisions.py{flag} --save {args.save.as_posix()}",
                "scenarios": {n: SCENARIOS[n].describe() for n in results}, "comparison": results}
        (_directory(args) / "comparison.json").write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
