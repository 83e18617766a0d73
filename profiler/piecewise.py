"""Piecewise CUDA graphs of a LlamaShard forward pass, as vLLM V1 runs batches that are not pure decodes.

vLLM V1 compiles the model and captures CUDA graphs of everything between the attention calls, for each
capture size (profiler: simulator.engine.vllm_capture_sizes) up to a limit; attention itself runs eagerly
between the graph pieces because its launch depends on the batch's composition. A batch is padded to the
next capture size, so its token-wise kernels run at the padded count, and the host launches L + 1 graph
replays and L attention calls instead of every kernel.

Pieces of one capture size (L layers):
  piece 0       embedding, then layer 0 up to attention (norm, QKV, RoPE, KV-cache write)
  piece j       layer j - 1 after attention (output projection, residual, norm, MLP, residual), then
                layer j up to attention
  piece L       layer L - 1 after attention, then the final norm
Each piece's outputs stay at fixed addresses: the next piece reads them, and the attention of layer j
reads piece j's query rows and writes into a fixed output buffer (`o`) that piece j + 1 reads. The LM head
and sampling run eagerly on the real sequences' last tokens, as vLLM computes logits outside the graph.
Padding rows compute on token 0 at position 0 and write their K/V into one scratch row of the cache.

On a CPU the pieces run as plain functions (no graphs), so tests check the arithmetic on tiny shapes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from profiler.model import KVCache, LlamaShard
from profiler.ops import apply_rope, embed, linear, residual_add, rms_norm, silu_and_mul
from simulator.engine import padded_capture_size

# attend(layer, q [n, q_heads, head_dim]) -> o [n, q_heads, head_dim]: one layer's attention of the real rows
Attend = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class _CaptureSize:
    """Static inputs and captured pieces of one capture size."""

    size: int
    ids: torch.Tensor          # [size] long
    positions: torch.Tensor    # [size] long
    write_index: torch.Tensor  # [size] long: the KV-cache row of each token (padding: the scratch row)
    o: torch.Tensor            # [size, q_heads, head_dim]: attention output, written between pieces
    pieces: list = field(default_factory=list)   # callables: graph replays, or the functions on a CPU
    queries: list = field(default_factory=list)  # per layer: the piece output holding its query rows
    final: torch.Tensor | None = None            # [size, hidden]: final-norm output
    graphs: list = field(default_factory=list)   # keeps the CUDAGraph objects alive


class PiecewiseForward:
    """A LlamaShard's forward pass as piecewise CUDA graphs per capture size, captured when first needed.

    kv           the cache the pieces write new K/V into (the executor's slot cache or the profiler's)
    max_tokens   the largest capture size (vLLM V1: min(2 x max_num_seqs, 512))
    scratch_row  a KV-cache row no sequence uses, for the padding rows' K/V
    graphs       capture CUDA graphs (CUDA only); False runs the same pieces eagerly
    pool         CUDA graph memory pool to share (e.g. with decode graphs); None makes one
    """

    def __init__(self, shard: LlamaShard, kv: KVCache, max_tokens: int, scratch_row: int,
                 graphs: bool = True, pool=None):
        self.shard, self.kv, self.max_tokens, self.scratch_row = shard, kv, max_tokens, scratch_row
        self.graphs = graphs and shard.device.type == "cuda"
        self.pool = pool if pool is not None or not self.graphs else torch.cuda.graph_pool_handle()
        self.sizes: dict[int, _CaptureSize] = {}
        self.capture_s = 0.0  # host seconds spent capturing (not serving time)
        q_heads, d = shard.q_heads, shard.head_dim
        self._o = torch.zeros((max_tokens, q_heads, d), device=shard.device, dtype=shard.dtype)

    def capture_size(self, num_tokens: int) -> int:
        """The capture size a batch of `num_tokens` runs at; raises past max_tokens."""
        if not 0 < num_tokens <= self.max_tokens:
            raise ValueError(f"a piecewise batch needs 1..{self.max_tokens} tokens, got {num_tokens}")
        return padded_capture_size(num_tokens, self.max_tokens)

    def prepare(self, num_tokens: int) -> None:
        """Capture the pieces a batch of `num_tokens` needs, if not yet done (before timing a step)."""
        self._get(self.capture_size(num_tokens))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, write_index: torch.Tensor,
                attend: Attend) -> torch.Tensor:
        """Final-norm hidden states [n, hidden] of the n real tokens (long tensors ids, positions,
        write_index of length n on the device); writes their K/V into the cache."""
        n = ids.shape[0]
        c = self._get(self.capture_size(n))
        c.ids[:n].copy_(ids)
        c.positions[:n].copy_(positions)
        c.write_index[:n].copy_(write_index)
        if n < c.size:  # rows left over from a larger earlier batch must not write into live cache rows
            c.write_index[n:].fill_(self.scratch_row)
        num_layers = len(self.shard.layers)
        for j, piece in enumerate(c.pieces):
            piece()
            if j < num_layers:
                c.o[:n].copy_(attend(j, c.queries[j][:n]))
        return c.final[:n]

    # ------------------------------------------------------------------ building one capture size

    def _get(self, size: int) -> _CaptureSize:
        c = self.sizes.get(size)
        if c is None:
            import time

            started = time.perf_counter()
            c = self.sizes[size] = self._build(size)
            self.capture_s += time.perf_counter() - started
        return c

    def _build(self, size: int) -> _CaptureSize:
        device = self.shard.device

        def longs(fill):
            return torch.full((size,), fill, dtype=torch.long, device=device)

        c = _CaptureSize(size, longs(0), longs(0), longs(self.scratch_row), self._o[:size])
        functions = self._piece_functions(c)
        if not self.graphs:
            c.pieces = functions
            for f in functions:  # run once so the outputs (queries, final) exist
                f()
            return c
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for f in functions:  # warm-up outside the graphs (cuBLAS handles, workspaces)
                f()
        torch.cuda.current_stream(device).wait_stream(stream)
        for f in functions:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                f()
            c.graphs.append(graph)
            c.pieces.append(graph.replay)
        return c

    def _piece_functions(self, c: _CaptureSize) -> list:
        """The L + 1 piece functions of capture size c; each leaves its outputs in `state` and on c."""
        shard, kv = self.shard, self.kv
        size, d, hq, hk = c.size, shard.head_dim, shard.q_heads, shard.kv_heads
        state = {}
        c.queries = [None] * len(shard.layers)

        def before_attention(i: int, hidden: torch.Tensor) -> None:
            w = shard.layers[i]
            x = rms_norm(hidden, w.input_norm)
            q, k, v = linear(x, w.qkv).split([hq * d, hk * d, hk * d], dim=-1)
            q, k = apply_rope(q.view(size, hq, d), k.view(size, hk, d), c.positions, shard.rope)
            kv.k[i].index_copy_(0, c.write_index, k)
            kv.v[i].index_copy_(0, c.write_index, v.view(size, hk, d))
            state["residual"] = hidden
            c.queries[i] = q

        def after_attention(i: int) -> torch.Tensor:
            w = shard.layers[i]
            hidden = residual_add(linear(c.o.reshape(size, hq * d), w.out), state["residual"])
            residual = hidden
            x = rms_norm(hidden, w.post_norm)
            return residual_add(linear(silu_and_mul(linear(x, w.up_gate)), w.down), residual)

        def first():
            before_attention(0, embed(c.ids, shard.embedding, 0, False))

        def middle(j: int):
            def piece():
                before_attention(j, after_attention(j - 1))
            return piece

        def last():
            c.final = rms_norm(after_attention(len(shard.layers) - 1), shard.final_norm)

        return [first, *(middle(j) for j in range(1, len(shard.layers))), last]
