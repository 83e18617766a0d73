"""A Llama-architecture model shard with random weights, built from the profiler's own ops and attention.

It exists to time whole forward passes (data/validation/) with exactly the kernels ops.csv and
attention.csv measured, and so a later real-execution mode can run a scheduler's batches on a GPU. The
shapes come from conf/model (no checkpoint is read); weights are random, so outputs are meaningless but
the work is the real work.

KV cache layout: one K and one V buffer per layer, [capacity_tokens, kv_heads, head_dim]. A step places
its sequences back to back (sequence i: its cached prefix, then its new tokens), the layout the varlen
attention kernels read; `StepInputs.write_index` says where each new token's K/V goes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from profiler.attention import (
    SplitBatch,
    VarlenBatch,
    attention,
    chunks_first,
    make_batch,
    make_split_batch,
    split_attention,
)
from profiler.ops import apply_rope, embed, linear, residual_add, rms_norm, rope_cache, sample, silu_and_mul
from simulator.config import ModelConfig


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor         # [(q_heads + 2 kv_heads) * head_dim, hidden] (this shard's heads)
    out: torch.Tensor         # [hidden, q_heads * head_dim]
    post_norm: torch.Tensor   # [hidden]
    up_gate: torch.Tensor     # [2 * intermediate/tp, hidden] (gate rows first, then up)
    down: torch.Tensor        # [hidden, intermediate/tp]


class KVCache:
    """K and V buffers for every layer of one shard: [capacity_tokens, kv_heads, head_dim] each."""

    def __init__(self, num_layers: int, capacity_tokens: int, kv_heads: int, head_dim: int, device, dtype,
                 fill_random: bool = True, seed: int = 0):
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

        def buffer():
            shape = (capacity_tokens, kv_heads, head_dim)
            # Random contents stand in for earlier steps' keys and values (never zeros: see METHOD.md).
            if fill_random:
                return torch.randn(shape, device=device, dtype=dtype, generator=gen)
            return torch.empty(shape, device=device, dtype=dtype)

        self.capacity_tokens = capacity_tokens
        self.k = [buffer() for _ in range(num_layers)]
        self.v = [buffer() for _ in range(num_layers)]


@dataclass
class StepInputs:
    """Device tensors describing one forward step (built once, reused by CUDA-graph replays)."""

    batch: VarlenBatch
    positions: torch.Tensor     # [total_q] position of each new token in its sequence
    write_index: torch.Tensor   # [total_q] KV-cache slot of each new token
    last_index: torch.Tensor    # [num_seqs] row of each sequence's last new token (LM head input)
    temperature: torch.Tensor   # [num_seqs]
    split: SplitBatch | None = None  # set: attention runs as a prefill launch and a decode launch

    def attention(self, backend: str, q, k, v, scale: float) -> torch.Tensor:
        """One layer's attention of this step over packed k, v (fused, or split when `split` is set)."""
        if self.split is not None:
            return split_attention(backend, q, k, v, self.split, scale)
        return attention(backend, q, k, v, self.batch, scale)


def make_step(composition, device, attention_launch: str = "fused_varlen") -> StepInputs:
    """StepInputs for ((q_tokens, prefix_tokens), ...) in the back-to-back cache layout.

    attention_launch "split" lays the sequences out chunks first (profiler.attention.chunks_first) and
    launches attention as two calls; "fused_varlen" keeps the given order and one call.
    """
    if attention_launch not in ("fused_varlen", "split"):
        raise ValueError(f"attention_launch={attention_launch!r}: the profiler launches fused_varlen or split")
    split = None
    if attention_launch == "split":
        composition = [composition[i] for i in chunks_first(composition)]
        split = make_split_batch(composition, device)
    batch = make_batch(composition, device)
    positions, write_index, last_index = [], [], []
    k_start = q_start = 0
    for q, p in composition:
        positions += range(p, p + q)
        write_index += range(k_start + p, k_start + p + q)
        q_start += q
        last_index.append(q_start - 1)
        k_start += p + q

    def ints(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    return StepInputs(batch, ints(positions), ints(write_index), ints(last_index),
                      torch.full((len(composition),), 0.8, device=device), split)


class LlamaShard:
    """One tensor-parallel shard of a Llama model (all layers: no pipeline split), random weights.

    At tp > 1 this is the work of one GPU without the all-reduces (which comm.csv measures).
    """

    def __init__(self, model: ModelConfig, tp: int, device, dtype=torch.bfloat16, backend: str = "torch_flash",
                 num_layers: int | None = None, seed: int = 0):
        model.validate_tp(tp)
        self.model, self.tp, self.device, self.dtype, self.backend = model, tp, device, dtype, backend
        self.num_layers = num_layers or model.num_layers
        self.q_heads = model.num_q_heads // tp
        self.kv_heads = model.kv_heads_per_gpu(tp)
        self.head_dim = model.head_dim
        self.vocab_shard = -(-model.vocab_size // tp)
        h, d, inter = model.hidden_size, model.head_dim, model.intermediate_size // tp
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

        def rand(*shape, scale=1.0):
            return torch.randn(shape, device=device, dtype=dtype, generator=gen).mul_(scale)

        def norm_weight():
            return 1.0 + rand(h, scale=0.02)

        self.layers = [
            LayerWeights(
                input_norm=norm_weight(),
                qkv=rand((self.q_heads + 2 * self.kv_heads) * d, h, scale=h ** -0.5),
                out=rand(h, self.q_heads * d, scale=(self.q_heads * d) ** -0.5),
                post_norm=norm_weight(),
                up_gate=rand(2 * inter, h, scale=h ** -0.5),
                down=rand(h, inter, scale=inter ** -0.5),
            )
            for _ in range(self.num_layers)
        ]
        self.embedding = rand(self.vocab_shard, h)
        self.final_norm = norm_weight()
        self.lm_head = rand(self.vocab_shard, h, scale=h ** -0.5)
        self.rope = rope_cache(d, model.max_model_len, model.rope_theta, device, dtype)
        self.scale = d ** -0.5

    def tensors(self) -> list[torch.Tensor]:
        """Every weight tensor of the shard (for memory accounting)."""
        out = [self.embedding, self.final_norm, self.lm_head, self.rope]
        for w in self.layers:
            out += [w.input_norm, w.qkv, w.out, w.post_norm, w.up_gate, w.down]
        return out

    def new_kv_cache(self, capacity_tokens: int, fill_random: bool = True, seed: int = 0) -> KVCache:
        return KVCache(self.num_layers, capacity_tokens, self.kv_heads, self.head_dim, self.device, self.dtype,
                       fill_random, seed)

    def forward(self, ids: torch.Tensor, step: StepInputs, kv: KVCache) -> torch.Tensor:
        """Token ids [total_q] of the step's new tokens -> logits [num_seqs, vocab_shard] of each sequence's
        last token. Writes the new tokens' K/V into `kv`."""
        n, d = ids.shape[0], self.head_dim
        hidden = embed(ids, self.embedding, 0, self.tp > 1)
        total_k = step.batch.total_k
        for i, w in enumerate(self.layers):
            residual = hidden
            x = rms_norm(hidden, w.input_norm)
            qkv = linear(x, w.qkv)
            q, k, v = qkv.split([self.q_heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
            q, k = apply_rope(q.view(n, self.q_heads, d), k.view(n, self.kv_heads, d), step.positions, self.rope)
            kv.k[i].index_copy_(0, step.write_index, k)
            kv.v[i].index_copy_(0, step.write_index, v.view(n, self.kv_heads, d))
            o = step.attention(self.backend, q, kv.k[i][:total_k], kv.v[i][:total_k], self.scale)
            hidden = residual_add(linear(o.reshape(n, self.q_heads * d), w.out), residual)
            residual = hidden
            x = rms_norm(hidden, w.post_norm)
            hidden = residual_add(linear(silu_and_mul(linear(x, w.up_gate)), w.down), residual)
        # As vLLM: the final norm runs over all tokens, the LM head only over each sequence's last one.
        hidden = rms_norm(hidden, self.final_norm)
        return linear(hidden.index_select(0, step.last_index), self.lm_head)

    def step(self, ids: torch.Tensor, step: StepInputs, kv: KVCache) -> torch.Tensor:
        """One serving iteration: forward plus sampling -> next token id per sequence [num_seqs]."""
        return sample(self.forward(ids, step, kv), step.temperature)
