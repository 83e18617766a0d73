"""Whole-iteration validation data: time full forward passes (embedding, all layers, final norm, LM head
on each sequence's last token, sampling) of a random-weight model shard on random batch compositions.

The runtime model sums per-op and attention times from the profile tables; these rows say how close that
sum comes to a real forward pass built from the same kernels. Each composition is timed twice:
  time_ms        CUDA-graph replay of the whole step: GPU time with no launch gaps (how ops were timed)
  eager_time_ms  the same step launched op by op from Python: includes CPU launch overhead where the CPU
                 cannot keep ahead of the GPU (small decode batches)
On a CPU both are the same perf_counter measurement.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from profiler.attention import choose_backend
from profiler.env import environment, measure_peaks
from profiler.grid import composition_json, iteration_compositions
from profiler.model import LlamaShard, make_step
from profiler.progress import progress
from profiler.schema import ITERATION_COLUMNS
from profiler.tables import ResumableCsv, iteration_key, read_json, write_json
from profiler.timing import summarize
from simulator.config import ModelConfig

ACTIVATION_HEADROOM_BYTES = 10 << 30  # graph pools and activations of an 8192-token step, with margin


def time_step(fn, device: torch.device, eager_repeats: int, graph_repeats: int):
    """(graph stats or None, eager stats) of `fn()` in ms. The graph is captured after eager warm-up."""
    fn()
    if device.type != "cuda":
        samples = []
        for _ in range(eager_repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return None, summarize(samples)
    torch.cuda.synchronize()
    eager = []
    for _ in range(eager_repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()  # one step at a time, as a serving loop that reads the sampled tokens back
        eager.append(s.elapsed_time(e))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(graph_repeats)]
    for s, e in events:
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    stats = summarize(s.elapsed_time(e) for s, e in events)
    del graph
    return stats, summarize(eager)


def run_iterations(model: ModelConfig, tp: int, out_dir: Path, gpu: str, device: torch.device,
                   count: int = 200, seed: int = 0, dtype=torch.bfloat16, backend: str | None = None,
                   num_layers: int | None = None, max_batch_tokens: int = 8192, eager_repeats: int = 3,
                   graph_repeats: int = 5, kv_capacity_tokens: int | None = None,
                   time_limit_s: float | None = None, command: str = "", log=print) -> dict:
    """Time `count` seeded random compositions of `model` at `tp`; rows go to
    <out_dir>/<gpu>/<model>/iterations.csv (resumable), facts to meta.json next to it."""
    started = time.perf_counter()
    env = environment(device)
    backend, checks = choose_backend(device, dtype, backend)
    directory = Path(out_dir) / gpu / model.name
    table = ResumableCsv(directory / "iterations.csv", ITERATION_COLUMNS, iteration_key)
    shard = LlamaShard(model, tp, device, dtype, backend, num_layers, seed=seed)
    layers = shard.num_layers
    per_token = 2 * layers * shard.kv_heads * shard.head_dim * torch.tensor([], dtype=dtype).element_size()
    if kv_capacity_tokens is None and device.type == "cuda":
        # From total memory, not what happens to be free, so a resumed run draws the same compositions.
        total = torch.cuda.get_device_properties(device).total_memory
        weights = sum(t.numel() * t.element_size() for t in shard.tensors())
        kv_capacity_tokens = int((total - weights - ACTIVATION_HEADROOM_BYTES - (2 << 30)) // per_token)
    elif kv_capacity_tokens is None:
        kv_capacity_tokens = 4096  # CPU runs are small demonstrations
    if kv_capacity_tokens <= 0:
        raise RuntimeError(f"no memory left for a KV cache of {model.name} at tp={tp} on {gpu}")
    compositions = iteration_compositions(model, count, seed, kv_capacity_tokens, max_batch_tokens)
    log(f"{model.name} tp={tp}: {layers} layers, KV cache {kv_capacity_tokens} tokens, backend {backend}, "
        f"{count} compositions")
    kv = shard.new_kv_cache(kv_capacity_tokens, fill_random=True, seed=seed + 1)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 2)
    complete, measured = True, 0
    for comp in progress(compositions, f"iterations {model.name}"):
        key = (model.name, tp, composition_json(comp))
        if key in table:
            continue
        if time_limit_s and time.perf_counter() - started > time_limit_s:
            complete = False
            log(f"time limit {time_limit_s:.0f} s reached; rerun the same command to resume")
            break
        step = make_step(comp, device)
        ids = torch.randint(0, model.vocab_size, (step.batch.total_q,), device=device, generator=gen)
        graph_stats, eager_stats = time_step(lambda ids=ids, step=step: shard.step(ids, step, kv), device, eager_repeats,
                                             graph_repeats)
        stats = graph_stats or eager_stats
        table.append({
            "model": model.name, "tp": tp, "num_layers": layers, "composition": composition_json(comp),
            "batch_size": len(comp), "q_tokens_total": sum(q for q, _ in comp),
            "kv_tokens_total": sum(p for _, p in comp), **stats.row(), "eager_time_ms": eager_stats.time_ms,
        })
        measured += 1
    seconds = time.perf_counter() - started
    old = read_json(directory / "meta.json")
    run = {"command": command, "date_utc": env["date_utc"], "seconds": seconds, "rows_measured": measured,
           "complete": complete}
    write_json(directory / "meta.json", {
        "what": (f"Whole forward passes of {model.name} (tp={tp} shard, {layers} layers, random bf16 weights) "
                 "over seeded random batch compositions; see docs/profiler.md"),
        "gpu": gpu, "environment": env, "peaks": old.get("peaks") or measure_peaks(device, dtype),
        "attention_backend": backend, "attention_check": checks, "dtype": str(dtype).replace("torch.", ""),
        "step": ("embedding -> per layer: rmsnorm, qkv_proj, rope, KV-cache write (index_copy_), attention, "
                 "attn_out_proj, residual_add, rmsnorm, mlp_up_gate, act, mlp_down, residual_add -> final rmsnorm "
                 "(all tokens) -> lm_head (last token of each sequence) -> sampling"),
        "timing": {"time_ms": f"CUDA-graph replay of the whole step, median of {graph_repeats} after one warm replay",
                   "eager_time_ms": f"eager launch, median of {eager_repeats}, synchronised after each step",
                   "cuda_graphs": device.type == "cuda"},
        "compositions": {"count": count, "seed": seed, "max_batch_tokens": max_batch_tokens,
                         "kv_capacity_tokens": kv_capacity_tokens,
                         "generator": "profiler.grid.iteration_compositions"},
        "kv_tokens_total": "sum of kv_prefix_tokens (cached before the step)",
        "rows": len(table.keys),
        "complete": complete and len(table.keys) >= count,
        "runs": old.get("runs", []) + [run],
    })
    log(f"{model.name}: {measured} compositions in {seconds:.1f} s")
    return run
