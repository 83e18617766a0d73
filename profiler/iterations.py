"""Whole-iteration validation data: time full forward passes (embedding, all layers, final norm, LM head
on each sequence's last token, sampling) of a random-weight model shard on random batch compositions.

The runtime model sums per-op and attention times from the profile tables; these rows say how close that
sum comes to a real forward pass built from the same kernels. Each composition is timed twice:
  time_ms        CUDA-graph replay of the whole step: GPU time with no launch gaps (how ops were timed)
  eager_time_ms  the same step launched op by op from Python: includes CPU launch overhead where the CPU
                 cannot keep ahead of the GPU (small decode batches)
On a CPU both are the same perf_counter measurement.

`attention_launch` says how each layer's attention is launched (simulator/engine.py): "fused_varlen" (one
varlen launch; iterations.csv, meta.json) or "split" (the prefill chunks and the decodes in two launches;
iterations_split.csv, meta_split.json). A split run also times each step of up to `piecewise_max_tokens`
tokens as vLLM V1 launches it (profiler/piecewise.py: piecewise CUDA graphs at the padded capture size,
attention eager between pieces, LM head and sampling eager), host launches included:
  piecewise_time_ms   CUDA-event span of that launch, synchronised after each step (NaN past the limit)
  piecewise_tokens    the capture size the step was padded to
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from profiler.attention import choose_backend
from profiler.env import environment, measure_peaks
from profiler.grid import composition_json, iteration_compositions
from profiler.model import LlamaShard, make_step
from profiler.ops import linear, sample
from profiler.piecewise import PiecewiseForward
from profiler.progress import progress
from profiler.schema import ITERATION_COLUMNS, SPLIT_ITERATION_COLUMNS, iteration_file_names
from profiler.tables import ResumableCsv, iteration_key, read_json, write_json
from profiler.timing import TimingStats, summarize
from simulator.config import ModelConfig

ACTIVATION_HEADROOM_BYTES = 10 << 30  # graph pools and activations of an 8192-token step, with margin
PIECEWISE_HEADROOM_BYTES = 4 << 30  # piecewise graphs of every capture size up to 512 tokens (32 layers)


def time_events(fn, repeats: int, warm_up: bool = True) -> TimingStats:
    """Median CUDA-event span of `fn()` launched from the host, synchronised after each call (as a serving
    loop that reads the sampled tokens back). One untimed call first unless `warm_up` is False."""
    if warm_up:
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        samples.append(s.elapsed_time(e))
    return summarize(samples)


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
    eager = time_events(fn, eager_repeats, warm_up=False)
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
    return stats, eager


def run_iterations(model: ModelConfig, tp: int, out_dir: Path, gpu: str, device: torch.device,
                   count: int = 200, seed: int = 0, dtype=torch.bfloat16, backend: str | None = None,
                   num_layers: int | None = None, max_batch_tokens: int = 8192, eager_repeats: int = 3,
                   graph_repeats: int = 5, kv_capacity_tokens: int | None = None,
                   time_limit_s: float | None = None, command: str = "", log=print,
                   attention_launch: str = "fused_varlen", piecewise_max_tokens: int = 512) -> dict:
    """Time `count` seeded random compositions of `model` at `tp`; rows go to
    <out_dir>/<gpu>/<model>/iterations.csv (iterations_split.csv for split launches; resumable), facts to
    meta.json (meta_split.json) next to it. The compositions depend only on the seed and the KV capacity,
    so both launch modes time the same batches."""
    started = time.perf_counter()
    env = environment(device)
    backend, checks = choose_backend(device, dtype, backend)
    directory = Path(out_dir) / gpu / model.name
    csv_name, meta_name = iteration_file_names(attention_launch)
    split = attention_launch == "split"
    piecewise = split and piecewise_max_tokens > 0
    columns = SPLIT_ITERATION_COLUMNS if split else ITERATION_COLUMNS
    table = ResumableCsv(directory / csv_name, columns, iteration_key)
    shard = LlamaShard(model, tp, device, dtype, backend, num_layers, seed=seed)
    layers = shard.num_layers
    per_token = 2 * layers * shard.kv_heads * shard.head_dim * torch.tensor([], dtype=dtype).element_size()
    if kv_capacity_tokens is None and device.type == "cuda":
        # From total memory, not what happens to be free, so a resumed run draws the same compositions.
        total = torch.cuda.get_device_properties(device).total_memory
        weights = sum(t.numel() * t.element_size() for t in shard.tensors())
        headroom = ACTIVATION_HEADROOM_BYTES + (PIECEWISE_HEADROOM_BYTES if piecewise else 0)
        kv_capacity_tokens = int((total - weights - headroom - (2 << 30)) // per_token)
    elif kv_capacity_tokens is None:
        kv_capacity_tokens = 4096  # CPU runs are small demonstrations
    if kv_capacity_tokens <= 0:
        raise RuntimeError(f"no memory left for a KV cache of {model.name} at tp={tp} on {gpu}")
    compositions = iteration_compositions(model, count, seed, kv_capacity_tokens, max_batch_tokens)
    log(f"{model.name} tp={tp}: {layers} layers, KV cache {kv_capacity_tokens} tokens, backend {backend}, "
        f"{count} compositions")
    # One row more than the compositions can use: the piecewise graphs' padding rows write their K/V there.
    kv = shard.new_kv_cache(kv_capacity_tokens + 1, fill_random=True, seed=seed + 1)
    pieces = PiecewiseForward(shard, kv, piecewise_max_tokens, kv_capacity_tokens) if piecewise else None
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
        step = make_step(comp, device, attention_launch)
        ids = torch.randint(0, model.vocab_size, (step.batch.total_q,), device=device, generator=gen)
        graph_stats, eager_stats = time_step(lambda ids=ids, step=step: shard.step(ids, step, kv), device, eager_repeats,
                                             graph_repeats)
        stats = graph_stats or eager_stats
        row = {
            "model": model.name, "tp": tp, "num_layers": layers, "composition": composition_json(comp),
            "batch_size": len(comp), "q_tokens_total": sum(q for q, _ in comp),
            "kv_tokens_total": sum(p for _, p in comp), **stats.row(), "eager_time_ms": eager_stats.time_ms,
        }
        if split:
            row["piecewise_time_ms"], row["piecewise_tokens"] = float("nan"), 0
            if pieces is not None and step.batch.total_q <= piecewise_max_tokens:
                row["piecewise_tokens"] = pieces.capture_size(step.batch.total_q)
                row["piecewise_time_ms"] = _time_piecewise(pieces, shard, kv, ids, step, device, eager_repeats)
        table.append(row)
        measured += 1
    seconds = time.perf_counter() - started
    old = read_json(directory / meta_name)
    run = {"command": command, "date_utc": env["date_utc"], "seconds": seconds, "rows_measured": measured,
           "complete": complete}
    timing = {"time_ms": f"CUDA-graph replay of the whole step, median of {graph_repeats} after one warm replay",
              "eager_time_ms": f"eager launch, median of {eager_repeats}, synchronised after each step",
              "cuda_graphs": device.type == "cuda"}
    if split:
        timing["piecewise_time_ms"] = (
            f"piecewise CUDA graphs (profiler/piecewise.py) padded to vLLM's capture sizes up to "
            f"{piecewise_max_tokens} tokens, attention eager between pieces, LM head and sampling eager; "
            f"median CUDA-event span of {eager_repeats}, synchronised after each step; graph capture excluded")
    write_json(directory / meta_name, {
        "what": (f"Whole forward passes of {model.name} (tp={tp} shard, {layers} layers, random bf16 weights) "
                 "over seeded random batch compositions; see docs/profiler.md"),
        "gpu": gpu, "environment": env, "peaks": old.get("peaks") or measure_peaks(device, dtype),
        "attention_backend": backend, "attention_check": checks, "dtype": str(dtype).replace("torch.", ""),
        "step": ("embedding -> per layer: rmsnorm, qkv_proj, rope, KV-cache write (index_copy_), attention, "
                 "attn_out_proj, residual_add, rmsnorm, mlp_up_gate, act, mlp_down, residual_add -> final rmsnorm "
                 "(all tokens) -> lm_head (last token of each sequence) -> sampling"),
        "attention_launch": attention_launch,
        "timing": timing,
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


def _time_piecewise(pieces: PiecewiseForward, shard: LlamaShard, kv, ids, step, device, repeats: int) -> float:
    """Milliseconds of one step launched as piecewise graphs (capture of a new size excluded)."""
    total_k = step.batch.total_k

    def attend(layer, q):
        return step.attention(shard.backend, q, kv.k[layer][:total_k], kv.v[layer][:total_k], shard.scale)

    def run():
        hidden = pieces.forward(ids, step.positions, step.write_index, attend)
        return sample(linear(hidden.index_select(0, step.last_index), shard.lm_head), step.temperature)

    if device.type != "cuda":
        started = time.perf_counter()
        run()
        return (time.perf_counter() - started) * 1e3
    return time_events(run, repeats).time_ms
