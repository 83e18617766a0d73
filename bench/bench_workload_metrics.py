"""Speed of workload loading and metrics: prints a table of wall times (best of several runs).

    python bench/bench_workload_metrics.py [--requests 20000] [--tokens 200] [--iterations 100000]

The metrics inputs are synthetic records shaped like a real run (every request emits `--tokens`
output tokens 10-50 ms apart, a few are rejected), so the numbers measure our code, not a simulation.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from simulator import metrics
from simulator.workload import WorkloadConfig, load_workload


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fake_records(num_requests: int, tokens: int, seed: int = 0) -> metrics.RequestRecords:
    rng = np.random.default_rng(seed)
    arrived = np.cumsum(rng.exponential(0.1, num_requests))
    first_token = arrived + rng.uniform(0.05, 2.0, num_requests)
    gaps = rng.uniform(0.01, 0.05, (num_requests, tokens))
    gaps[:, 0] = 0.0
    token_times = (first_token[:, None] + np.cumsum(gaps, axis=1)).ravel()
    rejected = rng.random(num_requests) < 0.01
    counts = np.where(rejected, 0, tokens)
    keep = np.repeat(~rejected, tokens)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    token_times = token_times[keep]
    last = np.where(rejected, np.nan, token_times[np.maximum(offsets[1:] - 1, 0)])
    return metrics.RequestRecords(
        request_id=np.arange(num_requests), replica_id=np.zeros(num_requests, dtype=np.int64),
        arrived_s=arrived, prompt_tokens=rng.integers(10, 2000, num_requests),
        output_tokens=np.full(num_requests, tokens), first_scheduled_s=np.where(rejected, np.nan, arrived + 0.01),
        first_token_s=np.where(rejected, np.nan, first_token), completed_s=last,
        preemptions=rng.integers(0, 2, num_requests), rejected=rejected,
        reject_reason=np.where(rejected, "too_long", "").astype(object),
        token_times_s=token_times, token_offsets=offsets,
    )


def fake_iterations(num_iterations: int, seed: int = 0) -> metrics.IterationRecords:
    rng = np.random.default_rng(seed)
    duration = rng.uniform(0.01, 0.05, num_iterations)
    return metrics.IterationRecords(
        replica_id=np.arange(num_iterations) % 4, stage=np.zeros(num_iterations, dtype=np.int64),
        start_s=np.cumsum(duration) - duration, duration_s=duration,
        batch_size=rng.integers(1, 128, num_iterations), num_prefill_tokens=rng.integers(0, 512, num_iterations),
        num_decode_tokens=rng.integers(0, 128, num_iterations), kv_blocks_used=rng.integers(0, 4000, num_iterations),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=100_000)
    args = parser.parse_args()

    rows = []
    for label, cfg in [
        ("load splitwise_conv (19,366 rows)", WorkloadConfig()),
        ("load splitwise_code (8,819 rows)", WorkloadConfig(trace="data/traces/splitwise_code.csv")),
        ("arxiv lengths + poisson, 28,257", WorkloadConfig(
            trace="data/traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", arrival="poisson",
            rate_qps=2.0)),
        ("synthetic 1M poisson + uniform", WorkloadConfig(trace=None, arrival="poisson", lengths="uniform",
                                                          num_requests=1_000_000)),
        ("synthetic 1M gamma + zipf", WorkloadConfig(trace=None, arrival="gamma", interarrival_cv=3.0,
                                                     lengths="zipf", num_requests=1_000_000)),
        ("load mooncake conversation (12,031 rows)", WorkloadConfig(
            trace="data/traces/mooncake/conversation_trace.jsonl.gz")),
        ("multi-turn sessions, 1M turns", WorkloadConfig(trace=None, arrival="poisson", lengths="multiturn",
                                                         num_requests=1_000_000)),
    ]:
        rows.append((label, best_of(lambda cfg=cfg: load_workload(cfg, seed=0))))

    records = fake_records(args.requests, args.tokens)
    iters = fake_iterations(args.iterations)
    size = f"{args.requests:,} req x {args.tokens} tok"
    rows.append((f"tbt_gaps_s, {size}", best_of(lambda: metrics.tbt_gaps_s(records))))
    rows.append((f"request_table, {size}", best_of(lambda: metrics.request_table(records))))
    rows.append((f"summarize, {size}", best_of(lambda: metrics.summarize(records, iters, 3600.0, 1.0))))
    summary = metrics.summarize(records, iters, 3600.0, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        rows.append((f"write_chrome_trace, {args.iterations:,} iterations",
                     best_of(lambda: metrics.write_chrome_trace(f"{tmp}/trace.json", iters), 3)))
        rows.append((f"write_outputs (all files), {size}",
                     best_of(lambda: metrics.write_outputs(tmp, records, iters, summary), 3)))

    width = max(len(label) for label, _ in rows)
    print(f"{'what':<{width}}  {'best wall (ms)':>14}")
    for label, seconds in rows:
        print(f"{label:<{width}}  {seconds * 1e3:>14.1f}")


if __name__ == "__main__":
    main()
