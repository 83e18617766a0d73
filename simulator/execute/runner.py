"""Runs one scheduled batch through a real Llama-architecture model: the GPU half of the executor.

The model is profiler.model.LlamaShard (random weights built on the device from conf/model shapes, the
profiler's own linear/norm/rope/sampling functions). Its KV cache is slot-based (simulator/execute/
slots.py): every request owns one contiguous range of token rows per layer, so attention reads each
sequence's K/V in place with FlashAttention-2's varlen kernel (torch's `_flash_attention_forward`, the
kernel attention.csv timed) by passing slot starts as `cu_seqlens_k` and lengths as `seqused_k`.

How a batch is launched follows an engine profile (simulator/engine.py):
* attention_launch "fused_varlen": one varlen launch over every sequence per layer; "split": the prefill
  chunks in one launch and the decodes in another (sequences ordered chunks first, each kind by slot);
* cuda_graphs "decode_only" (as vLLM V0): decode-only batches of up to graph_max_decode_batch sequences
  replay CUDA graphs captured per padded batch size (1, 2, 4, 8, then multiples of 8) and per power-of-two
  bound on the context length (the kernel's max_seqlen_k); other batches run eagerly, op by op;
  "piecewise" (as vLLM V1): those decode graphs, and every other batch of up to graph_max_tokens tokens
  runs as piecewise graphs padded to vLLM's capture sizes with attention launched between the pieces
  (profiler/piecewise.py); "none": everything eager.
Graph capture happens the first time a shape is needed and its time is reported apart
(`StepTiming.excluded_s`) so that it never counts as serving time.

With a prefix cache (`attach`), cached tokens are not recomputed: their K/V rows come from a
block store kept after the slots (simulator/execute/prefix_rows.py), and token ids follow the requests'
content, so requests sharing a prefix feed the model the same tokens. The copies are excluded time too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from profiler.attention import bottom_right_causal_mask, make_batch, reference_attention, relative_error
from profiler.model import KVCache, LlamaShard
from profiler.ops import apply_rope, embed, linear, residual_add, rms_norm, sample, silu_and_mul
from profiler.piecewise import PiecewiseForward
from simulator.config import ModelConfig
from simulator.engine import EngineProfile, padded_capture_size
from simulator.execute.prefix_rows import ContentTokens, PrefixRows
from simulator.execute.slots import SlotAllocator

TEMPERATURE = 0.8  # sampling temperature of every request (the work is the same at any value)
SCRATCH_TOKENS = 16  # rows kept at the start of the cache for the padding entries of graph batches
GRAPH_MAX_BATCH = 256  # vLLM's largest captured decode batch
MIN_GRAPH_CONTEXT = 256  # smallest max_seqlen_k bound a decode graph is captured for


@dataclass
class StepTiming:
    """Host-side seconds of one executed batch (perf_counter), and the device's span of it.

    prepare_s   slot allocation, index arithmetic, host-to-device copies of the step's inputs
    launch_s    enqueueing the forward pass and sampling (Python op by op, or one graph replay)
    sync_s      waiting until the sampled tokens are back on the host
    gpu_s       CUDA-event span from the first kernel to the end of sampling (NaN on a CPU); when the
                host cannot launch kernels as fast as the GPU runs them, this span includes those gaps
    path        "graph" (decode CUDA graph), "piecewise", "eager" or "predicted"
    padded_batch sequences the GPU ran (graph batches are padded up to their captured size; piecewise
                batches: the tokens of their capture size)
    excluded_s  host time spent capturing a new CUDA graph for this step: not serving time
    duration_s  set only by runners that do no real work (PredictorRunner): the iteration's time
    """

    prepare_s: float = 0.0
    launch_s: float = 0.0
    sync_s: float = 0.0
    gpu_s: float = float("nan")
    path: str = "eager"
    padded_batch: int = 0
    excluded_s: float = 0.0
    duration_s: float | None = None


@dataclass
class SlotAttention:
    """Offsets of one attention launch over slot-resident K/V (device tensors plus host copies).

    Sequence i has q_lens[i] new tokens; its keys are rows k_starts[i] .. k_starts[i] + k_lens[i] of the
    layer's cache (prefix then the new tokens). Sequences are ordered by slot start, so cu_k is sorted.
    """

    cu_q: torch.Tensor  # [batch + 1] int32
    cu_k: torch.Tensor  # [batch + 1] int32: slot starts, then the cache size
    seqused_k: torch.Tensor  # [batch] int32: keys each sequence uses
    max_q: int
    max_k: int
    q_lens: tuple = ()
    k_starts: tuple = ()
    k_lens: tuple = ()


def slot_attention(backend: str, q, k_cache, v_cache, a: SlotAttention, scale: float) -> torch.Tensor:
    """Attention of packed q [total_q, hq, d] over each sequence's slot in k_cache/v_cache [rows, hk, d]."""
    if backend == "torch_flash":
        return torch.ops.aten._flash_attention_forward(
            q, k_cache, v_cache, a.cu_q, a.cu_k, a.max_q, a.max_k, 0.0, True, False, scale=scale,
            seqused_k=a.seqused_k)[0]
    if backend == "sdpa_masked":  # CPU path: one SDPA call per sequence on views of its slot
        out = torch.empty_like(q)
        groups = q.shape[1] // k_cache.shape[1]
        q_start = 0
        for q_len, k_start, k_len in zip(a.q_lens, a.k_starts, a.k_lens):
            qi = q[q_start:q_start + q_len].transpose(0, 1).unsqueeze(0)
            ki = k_cache[k_start:k_start + k_len].transpose(0, 1).repeat_interleave(groups, 0).unsqueeze(0)
            vi = v_cache[k_start:k_start + k_len].transpose(0, 1).repeat_interleave(groups, 0).unsqueeze(0)
            mask = bottom_right_causal_mask(q_len, k_len - q_len, q.device)
            oi = torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale)
            out[q_start:q_start + q_len] = oi.squeeze(0).transpose(0, 1)
            q_start += q_len
        return out
    raise ValueError(f"attention backend {backend!r} cannot read a slot KV cache; "
                     f"use torch_flash or sdpa_masked")


@dataclass
class CopiedFirst:
    """An attention launch (`attn`) that first copies K/V rows src -> dst in the layer's cache: prefix
    blocks another request of the same step computes, written by this layer just before (prefix_rows.py)."""

    attn: object
    src: torch.Tensor
    dst: torch.Tensor


def launch_attention(backend: str, q, k_cache, v_cache, attn, scale: float) -> torch.Tensor:
    """One layer's attention: `attn` is a SlotAttention (one launch), a tuple of them whose query rows
    follow one another (a split launch: the chunks' launch, then the decodes'), or a CopiedFirst."""
    if isinstance(attn, CopiedFirst):
        for cache in (k_cache, v_cache):
            cache.index_copy_(0, attn.dst, cache.index_select(0, attn.src))
        attn = attn.attn
    if isinstance(attn, SlotAttention):
        return slot_attention(backend, q, k_cache, v_cache, attn, scale)
    outs, start = [], 0
    for part in attn:
        rows = sum(part.q_lens)
        outs.append(slot_attention(backend, q[start:start + rows], k_cache, v_cache, part, scale))
        start += rows
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def forward(shard: LlamaShard, kv: KVCache, ids, positions, write_index, last_index, attn):
    """LlamaShard's forward pass (same ops, same order) with the slot KV layout -> logits of each
    sequence's last new token [num_seqs, vocab]. Writes the new tokens' K/V into their slots.
    attn: what launch_attention takes."""
    n, d, hq, hk = ids.shape[0], shard.head_dim, shard.q_heads, shard.kv_heads
    hidden = embed(ids, shard.embedding, 0, False)
    for i, w in enumerate(shard.layers):
        residual = hidden
        x = rms_norm(hidden, w.input_norm)
        q, k, v = linear(x, w.qkv).split([hq * d, hk * d, hk * d], dim=-1)
        q, k = apply_rope(q.view(n, hq, d), k.view(n, hk, d), positions, shard.rope)
        kv.k[i].index_copy_(0, write_index, k)
        kv.v[i].index_copy_(0, write_index, v.view(n, hk, d))
        o = launch_attention(shard.backend, q, kv.k[i], kv.v[i], attn, shard.scale)
        hidden = residual_add(linear(o.reshape(n, hq * d), w.out), residual)
        residual = hidden
        x = rms_norm(hidden, w.post_norm)
        hidden = residual_add(linear(silu_and_mul(linear(x, w.up_gate)), w.down), residual)
    hidden = rms_norm(hidden, shard.final_norm)
    return linear(hidden.index_select(0, last_index), shard.lm_head)


def graph_batch_size(n: int, max_batch: int = GRAPH_MAX_BATCH) -> int:
    """Captured batch size a decode batch of n sequences is padded to: vLLM's capture sizes (1, 2, 4, 8,
    16, 24, ..., then multiples of 16 past 256), as the runtime model pads it (simulator.engine)."""
    return padded_capture_size(n, max_batch)


def graph_context_bound(max_k: int) -> int:
    """max_seqlen_k a decode graph is captured with: the next power of two, at least MIN_GRAPH_CONTEXT."""
    return max(MIN_GRAPH_CONTEXT, 1 << (int(max_k) - 1).bit_length())


class _DecodeGraph:
    """One captured decode step of `batch` sequences with contexts up to `context_bound` tokens.

    Its inputs are two device buffers filled by one copy each: int64 [ids | positions | write_index]
    and int32 [cu_k (batch + 1) | seqused_k (batch)]. Sequence order: slot start, padding first.
    """

    def __init__(self, runner: TorchModelRunner, batch: int, context_bound: int):
        device = runner.device
        self.batch = batch
        self.longs = torch.zeros(3 * batch, dtype=torch.long, device=device)
        self.ints = torch.zeros(2 * batch + 1, dtype=torch.int32, device=device)
        ids, positions, write_index = self.longs.view(3, batch)
        cu_k, seqused_k = self.ints[: batch + 1], self.ints[batch + 1:]
        attn = SlotAttention(torch.arange(batch + 1, dtype=torch.int32, device=device), cu_k, seqused_k, 1,
                             context_bound)
        last_index = torch.arange(batch, device=device)
        temperature = torch.full((batch,), TEMPERATURE, device=device)
        # The graph keeps raw pointers to every input: they must live as long as it does.
        self.inputs = (attn, last_index, temperature)
        # Padding-like contents for warm-up and capture: every entry decodes in the scratch rows.
        self.ints[batch + 1:].fill_(1)
        self.ints[batch] = runner.capacity_tokens

        def step():
            logits = forward(runner.shard, runner.kv, ids, positions, write_index, last_index, attn)
            return sample(logits, temperature)

        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            step()  # warm-up outside the graph (cuBLAS handles, workspaces)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=runner.graph_pool):
            self.tokens = step()


class TorchModelRunner:
    """The real model and KV cache on `device`; `execute` runs one batch and says how long each part took.

    model            conf/model shapes (all layers unless num_layers is given)
    capacity_tokens  KV rows per layer (slot space); SCRATCH_TOKENS more are reserved for graph padding
    cuda_graphs      False: no CUDA graphs at all, whatever the engine profile says
    engine           how batches are launched (attention_launch, cuda_graphs, graph limits); None: fused
                     varlen attention and decode-only graphs of up to 256 sequences (servesim's engine)
    store_tokens     rows kept after the slots for the K/V of prefix-cache blocks (0: no prefix reuse);
                     at least the prefix cache's blocks x block size
    """

    def __init__(self, model: ModelConfig, device, capacity_tokens: int, dtype=None,
                 num_layers: int | None = None, cuda_graphs: bool = True, seed: int = 0,
                 engine: EngineProfile | None = None, store_tokens: int = 0):
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        backend = "torch_flash" if on_gpu else "sdpa_masked"
        self.model = model
        self.shard = LlamaShard(model, 1, self.device, dtype, backend, num_layers, seed)
        self.capacity_tokens = capacity_tokens + SCRATCH_TOKENS + store_tokens
        self.store_tokens = store_tokens
        self.prefix: PrefixRows | None = None  # set by attach
        self.content: ContentTokens | None = None
        self.kv = self.shard.new_kv_cache(self.capacity_tokens, fill_random=False)
        self.slots = SlotAllocator(capacity_tokens)
        self.slot_start: dict[int, int] = {}  # request id -> first row of its slot (after the scratch rows)
        self.slot_size: dict[int, int] = {}
        self.last_token: dict[int, int] = {}  # request id -> its last sampled token id
        if engine is not None and engine.attention_launch not in ("fused_varlen", "split"):
            raise ValueError(f"engine {engine.name}: attention_launch={engine.attention_launch!r} cannot be "
                             f"executed (fused_varlen and split can)")
        self.engine = engine
        self.split_attention = engine is not None and engine.attention_launch == "split"
        graph_mode = "decode_only" if engine is None else engine.cuda_graphs
        self.graph_max_batch = GRAPH_MAX_BATCH if engine is None else engine.graph_max_decode_batch
        self.cuda_graphs = cuda_graphs and on_gpu and graph_mode != "none"
        self.graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        # Piecewise graphs: the padding rows write their K/V into scratch row 0 (never a slot's).
        self.pieces = None
        if cuda_graphs and graph_mode == "piecewise" and engine.graph_max_tokens > 0:
            self.pieces = PiecewiseForward(self.shard, self.kv, engine.graph_max_tokens, 0, graphs=on_gpu,
                                           pool=self.graph_pool)
        self.graphs: dict[tuple[int, int], _DecodeGraph] = {}
        self.graph_capture_s = 0.0
        self.temperature = torch.full((1024,), TEMPERATURE, device=self.device)
        self.on_gpu = on_gpu

    # --- slots --------------------------------------------------------------------------------------

    def _slots_for(self, ids: np.ndarray, reserve_tokens: np.ndarray) -> tuple[np.ndarray, list[bool]]:
        """Each request's slot start, and whether its slot is new this step."""
        starts = np.empty(len(ids), np.int64)
        fresh = [False] * len(ids)
        for i, (r, size) in enumerate(zip(ids.tolist(), reserve_tokens.tolist())):
            start = self.slot_start.get(r)
            if start is None:
                start = self.slots.allocate(size) + SCRATCH_TOKENS
                self.slot_start[r], self.slot_size[r] = start, size
                fresh[i] = True
            starts[i] = start
        return starts, fresh

    def release(self, request_ids) -> None:
        """These requests finished or were preempted: their slots go back (their K/V is gone)."""
        for r in request_ids:
            start = self.slot_start.pop(int(r), None)
            if start is not None:
                self.slots.free(start - SCRATCH_TOKENS, self.slot_size.pop(int(r)))
            self.last_token.pop(int(r), None)
            if self.prefix is not None:
                self.prefix.forget(int(r))
            if self.content is not None:
                self.content.forget(int(r))

    # --- prefix reuse ---------------------------------------------------------------------------------

    def attach(self, kv, requests) -> None:
        """Serve `requests` with a policy whose cache is `kv`: token ids follow the requests' content when
        they have one, and a prefix cache's hits (kv a PrefixCachingKV) are reused for real, their K/V
        copied from the block store instead of being recomputed."""
        from simulator.prefix_cache import PrefixCachingKV

        self.content = None if requests.content is None else ContentTokens(requests, kv.block_size)
        self.prefix = None
        if isinstance(kv, PrefixCachingKV):
            need = kv.num_blocks * kv.block_size
            if need > self.store_tokens:
                raise ValueError(f"the prefix cache's {kv.num_blocks} blocks of {kv.block_size} tokens need "
                                 f"{need} store rows; this runner keeps {self.store_tokens} (store_tokens)")
            self.prefix = PrefixRows(kv, requests, self.capacity_tokens - self.store_tokens)

    def _copy_rows(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy K/V rows src -> dst in every layer (disjoint sets of rows)."""
        if not len(src):
            return
        src_d = torch.from_numpy(src).to(self.device)
        dst_d = torch.from_numpy(dst).to(self.device)
        for cache in (*self.kv.k, *self.kv.v):
            cache.index_copy_(0, dst_d, cache.index_select(0, src_d))

    def _seconds_since(self, started: float) -> float:
        """Host seconds since `started` (perf_counter), with the device's queued work finished."""
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def _content_token_ids(self, ids: np.ndarray, q: np.ndarray, p: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
        """Overwrite token_ids (packed, q[i] tokens of ids[i] from position p[i]) where the request's content
        is known; True there."""
        known = np.zeros(len(token_ids), dtype=bool)
        first = 0
        tokens, vocab = self.content, self.model.vocab_size
        for r, n, start in zip(ids.tolist(), q.tolist(), p.tolist()):
            if start < tokens.covered_tokens(r):
                content = tokens.token_ids(r, np.arange(start, start + n), vocab)
                mask = content >= 0
                token_ids[first:first + n][mask] = content[mask]
                known[first:first + n] = mask
            first += n
        return known

    @property
    def slot_holders(self) -> list[int]:
        return list(self.slot_start)

    # --- one batch ----------------------------------------------------------------------------------

    def execute(self, ids: np.ndarray, num_tokens: np.ndarray, kv_tokens: np.ndarray,
                prompt_tokens: np.ndarray, generated_tokens: np.ndarray,
                reserve_tokens: np.ndarray) -> StepTiming:
        """Compute `num_tokens[i]` new tokens of request ids[i], which has kv_tokens[i] in its slot already.

        prompt_tokens / generated_tokens (before the step) choose token ids: a decode feeds back the token
        the request sampled last; prompt (and recomputed) tokens are fixed pseudo-random ids.
        reserve_tokens: slot size of a request seen for the first time (its prompt + output tokens).
        """
        t0 = time.perf_counter()
        starts, fresh = self._slots_for(ids, reserve_tokens)
        copy_s, layer_copies = 0.0, None
        if self.prefix is not None:  # cached tokens arrive by copy, not by computing them again
            # The store's bookkeeping and copies exist only because of the slot layout (an engine with
            # block tables points at shared blocks): timed apart, like graph capture.
            c0 = time.perf_counter()
            copies = self.prefix.before_step(ids.tolist(), kv_tokens.tolist(), num_tokens.tolist(), fresh,
                                             starts.tolist())
            self._copy_rows(self.prefix.rows(copies.store_src), self.prefix.rows(copies.store_dst))
            if copies.layer_src:
                layer_copies = tuple(torch.from_numpy(self.prefix.rows(rows)).to(self.device)
                                     for rows in (copies.layer_src, copies.layer_dst))
            copy_s = self._seconds_since(c0)
        # Slot order; a split launch takes the chunks first (each kind in slot order).
        order = np.lexsort((starts, num_tokens == 1)) if self.split_attention else np.argsort(starts, kind="stable")
        ids, q, p, starts = ids[order], num_tokens[order], kv_tokens[order], starts[order]
        prompt, generated = prompt_tokens[order], generated_tokens[order]
        total_q = int(q.sum())
        first_q = np.cumsum(q) - q
        positions = np.arange(total_q) - np.repeat(first_q - p, q)
        owner = np.repeat(np.arange(len(ids)), q)
        token_ids = (ids[owner] * 1_000_003 + positions * 7_919) % self.model.vocab_size
        known = None if self.content is None else self._content_token_ids(ids, q, p, token_ids)
        # The token a decode computes is the one it sampled last (known once the request has emitted one),
        # unless the workload says what it is (a conversation's next turn resends the answer it recorded).
        fed_back = positions == (prompt + generated - 1)[owner]
        fed_back &= (generated > 0)[owner]
        if known is not None:
            fed_back &= ~known
        if fed_back.any():
            token_ids[fed_back] = [self.last_token.get(r, 0) for r in ids[owner[fed_back]].tolist()]
        write_index = starts[owner] + positions
        k_lens = p + q
        use_graph = (self.cuda_graphs and total_q == len(ids) and len(ids) <= self.graph_max_batch
                     and int(k_lens.max()) <= self.model.max_model_len and layer_copies is None)
        if use_graph:
            timing, tokens = self._run_graph(t0, token_ids, positions, write_index, starts, k_lens)
        else:
            timing, tokens = self._run_eager(t0, token_ids, positions, write_index, q, starts, k_lens,
                                             layer_copies)
        self.last_token.update(zip(ids.tolist(), tokens))
        if self.prefix is not None:  # the blocks this step filled go to the store, before anything frees them
            c0 = time.perf_counter()
            self._copy_rows(*self.prefix.after_step(ids.tolist(), p.tolist(), q.tolist(), starts.tolist()))
            copy_out_s = self._seconds_since(c0)
            timing.prepare_s -= copy_s  # the copies in happened while preparing
            timing.excluded_s += copy_s + copy_out_s
        return timing

    def _run_eager(self, t0, token_ids, positions, write_index, q, starts, k_lens, layer_copies=None):
        n = len(q)
        cu_q = np.concatenate([[0], np.cumsum(q)])
        longs = torch.from_numpy(np.concatenate([token_ids, positions, write_index, cu_q[1:] - 1])).to(self.device)
        total_q = len(token_ids)
        ids_d, pos_d, write_d, last_d = longs[:total_q], longs[total_q:2 * total_q], \
            longs[2 * total_q:3 * total_q], longs[3 * total_q:]
        attn = self._attention_launch(q, starts, k_lens)
        if layer_copies is not None:
            attn = CopiedFirst(attn, *layer_copies)
        pieces = self.pieces if self.pieces is not None and total_q <= self.pieces.max_tokens else None
        excluded = 0.0
        if pieces is not None:  # capture a new size before the clock starts: capture is not serving time
            c0 = time.perf_counter()
            pieces.prepare(total_q)
            excluded = time.perf_counter() - c0
            self.graph_capture_s += excluded
        events = self._events()
        t1 = time.perf_counter()
        if events:
            events[0].record()
        if pieces is not None:
            hidden = pieces.forward(ids_d, pos_d, write_d, lambda layer, q_rows: launch_attention(
                self.shard.backend, q_rows, self.kv.k[layer], self.kv.v[layer], attn, self.shard.scale))
            logits = linear(hidden.index_select(0, last_d), self.shard.lm_head)
        else:
            logits = forward(self.shard, self.kv, ids_d, pos_d, write_d, last_d, attn)
        if n > len(self.temperature):
            self.temperature = torch.full((2 * n,), TEMPERATURE, device=self.device)
        tokens_d = sample(logits, self.temperature[:n])
        if events:
            events[1].record()
        t2 = time.perf_counter()
        tokens = tokens_d.tolist()  # waits for the GPU
        t3 = time.perf_counter()
        gpu_s = events[0].elapsed_time(events[1]) / 1e3 if events else float("nan")
        if pieces is not None:
            return StepTiming(t1 - t0 - excluded, t2 - t1, t3 - t2, gpu_s, "piecewise",
                              pieces.capture_size(total_q), excluded), tokens
        return StepTiming(t1 - t0, t2 - t1, t3 - t2, gpu_s, "eager", n), tokens

    def _attention_launch(self, q, starts, k_lens):
        """The SlotAttention of this batch, or (chunks', decodes') SlotAttentions of a split launch, from
        host arrays; their int32 offsets reach the device in one copy."""
        n = len(q)
        chunks = int((q > 1).sum())
        parts = [(0, n)] if not self.split_attention or chunks in (0, n) else [(0, chunks), (chunks, n)]
        host, layout = [], []
        for lo, hi in parts:
            offset = sum(len(h) for h in host)
            qs = q[lo:hi]
            host += [np.concatenate([[0], np.cumsum(qs)]), starts[lo:hi], [self.capacity_tokens], k_lens[lo:hi]]
            layout.append((offset, hi - lo))
        ints = torch.from_numpy(np.concatenate(host).astype(np.int32)).to(self.device)
        launches = []
        for (lo, hi), (offset, m) in zip(parts, layout):
            launches.append(SlotAttention(
                ints[offset: offset + m + 1], ints[offset + m + 1: offset + 2 * m + 2],
                ints[offset + 2 * m + 2: offset + 3 * m + 2], int(q[lo:hi].max()), int(k_lens[lo:hi].max()),
                tuple(q[lo:hi].tolist()), tuple(starts[lo:hi].tolist()), tuple(k_lens[lo:hi].tolist())))
        return launches[0] if len(launches) == 1 else tuple(launches)

    def _run_graph(self, t0, token_ids, positions, write_index, starts, k_lens):
        n = len(token_ids)
        key = (graph_batch_size(n, self.graph_max_batch), graph_context_bound(int(k_lens.max())))
        excluded = 0.0
        graph = self.graphs.get(key)
        if graph is None:
            c0 = time.perf_counter()
            graph = self.graphs[key] = _DecodeGraph(self, *key)
            excluded = time.perf_counter() - c0
            self.graph_capture_s += excluded
        b, pad = graph.batch, graph.batch - n
        # Padding entries first (they decode one token in the scratch rows at 0), then the real ones.
        longs = np.zeros(3 * b, np.int64)
        longs[pad:b] = token_ids
        longs[b + pad:2 * b] = positions
        longs[2 * b + pad:] = write_index
        ints = np.empty(2 * b + 1, np.int32)
        ints[:pad], ints[pad:b], ints[b] = 0, starts, self.capacity_tokens
        ints[b + 1:b + 1 + pad], ints[b + 1 + pad:] = 1, k_lens
        graph.longs.copy_(torch.from_numpy(longs))
        graph.ints.copy_(torch.from_numpy(ints))
        events = self._events()
        t1 = time.perf_counter()
        events[0].record()
        graph.graph.replay()
        events[1].record()
        t2 = time.perf_counter()
        tokens = graph.tokens[pad:].tolist()
        t3 = time.perf_counter()
        gpu_s = events[0].elapsed_time(events[1]) / 1e3
        return StepTiming(t1 - t0 - excluded, t2 - t1, t3 - t2, gpu_s, "graph", b, excluded), tokens

    def _events(self):
        if not self.on_gpu:
            return None
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    # --- checks -------------------------------------------------------------------------------------

    def check_slot_attention(self, seed: int = 0) -> float:
        """Largest relative error of slot attention against the float32 reference on scattered slots
        (prefill chunks over prefixes with decodes, and a decode-only launch, which FlashAttention runs
        down another path); raises if it is off."""
        # ((new, cached) tokens of each sequence, slot start of each sequence)
        cases = [([(5, 9), (1, 40), (33, 17), (1, 1)], [300, 0, 120, 77]),
                 ([(1, 40), (1, 1), (1, 200), (1, 63)], [250, 0, 30, 500])]
        errors = [self._check_case(composition, starts, seed + i)
                  for i, (composition, starts) in enumerate(cases)]
        dtype = self.kv.k[0].dtype
        tolerance = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
        if not max(errors) < tolerance:
            raise RuntimeError(f"slot attention ({self.shard.backend}) is wrong: relative errors {errors} "
                               f"against the float32 reference (tolerance {tolerance})")
        return max(errors)

    def _check_case(self, composition, starts, seed) -> float:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        hq, hk, d = self.shard.q_heads, self.shard.kv_heads, self.shard.head_dim
        order = np.argsort(starts)  # slots in cache order, as execute() launches them
        composition = [composition[i] for i in order]
        starts = [starts[i] for i in order]
        rows = 600
        dtype = self.kv.k[0].dtype
        k_cache = torch.randn((rows, hk, d), generator=gen, device=self.device).to(dtype)
        v_cache = torch.randn((rows, hk, d), generator=gen, device=self.device).to(dtype)
        q_lens = [c[0] for c in composition]
        k_lens = [c[0] + c[1] for c in composition]
        q = torch.randn((sum(q_lens), hq, d), generator=gen, device=self.device).to(dtype)

        def ints(values):
            return torch.tensor(values, dtype=torch.int32, device=self.device)

        attn = SlotAttention(ints([0, *np.cumsum(q_lens)]), ints([*starts, rows]), ints(k_lens), max(q_lens),
                             max(k_lens), tuple(q_lens), tuple(starts), tuple(k_lens))
        out = slot_attention(self.shard.backend, q, k_cache, v_cache, attn, d ** -0.5)
        # The reference reads the same keys packed back to back.
        rows_used = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, k_lens)]).to(self.device)
        packed = make_batch(composition, self.device)
        ref = reference_attention(q, k_cache[rows_used], v_cache[rows_used], packed, d ** -0.5)
        return relative_error(out, ref)


def kv_rows_that_fit(model: ModelConfig, device, headroom_bytes: int = 6 << 30) -> int:
    """KV token rows a GPU has room for now (call it before building the model, which it accounts for),
    keeping `headroom_bytes` for activations, sampling buffers and CUDA graphs."""
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    room = free - model.weight_bytes_per_gpu(1, 1) - headroom_bytes
    return max(0, int(room // model.kv_bytes_per_token(1, 1)))
