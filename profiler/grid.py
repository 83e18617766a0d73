"""What the profiler measures: the points of each table, as plain data (no torch here).

A point is one row-to-be. Every point carries a `shape_key`: two points with the same key do the same
computation on the same shapes, so one measurement serves both (Llama-3-8B and Mistral-7B share every
non-vocab shape; rmsnorm at TP1 and TP8 is the same kernel). The grids are dense where cost changes shape
(small token counts, where kernels go from launch- to bandwidth- to compute-bound; GEMM tile steps) and
sparse elsewhere, so the runtime model can interpolate.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from simulator.config import ModelConfig

# Token counts of the first profiles (48 points: dense below 128, then roughly geometric). Every one of
# them is still on TOKEN_LADDER; the runtime model's report uses this ladder to also score held-out
# regions as wide as they were before the ladder was densified.
COARSE_TOKEN_LADDER = [
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448,
    512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192,
    10240, 12288, 14336, 16384, 20480, 24576, 32768,
]
# (first, last, step) segments of the token ladder. Kernel choices switch at exact counts (the embedding
# lookup changes kernel after 16 indices; cuBLAS picks a slow GEMM for a band of counts near 448 on H100;
# norms and the activation change launch shapes in the tens and low hundreds), and the simulator asks for
# every count in between, so the ladder is dense where serving batches live (every count to 32, every 4
# to 128, every 8 to 512, every 16 to 1024) and then every 1/32 to 1/16 of the count.
TOKEN_LADDER_SEGMENTS = [
    (1, 32, 1), (36, 128, 4), (136, 512, 8), (528, 1024, 16), (1056, 2048, 32), (2176, 4096, 128),
    (4608, 8192, 512), (9216, 16384, 1024), (18432, 32768, 2048),
]
TOKEN_LADDER = sorted({n for first, last, step in TOKEN_LADDER_SEGMENTS for n in range(first, last + 1, step)})
# Ops whose rows are "sequences" (last tokens) or all tokens of a batch; logits beyond 16k rows are
# never computed by a serving engine (and would not fit next to a 128k vocabulary).
LOGIT_ROWS_MAX = 16384

# Attention grid ladders.
PREFILL_CHUNKS = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
KV_PREFIXES = [0, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
DECODE_CONTEXTS = [128, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
# Points between the ladders above (added after the first profiles; drawn from their own seed so every
# earlier point stays as it was): FA2 changes its KV split and its number of waves at batch sizes and
# contexts between the ladder steps, and a fit needs to see those steps.
EXTRA_DECODE_BATCHES = [3, 6, 12, 24, 48, 96, 192, 384]
EXTRA_DECODE_CONTEXTS = [256, 768, 1536, 3072, 6144, 12288, 24576, 49152, 98304]
EXTRA_PREFILL_CHUNKS = [32, 96, 192, 384, 768, 1536, 3072, 6144]
EXTRA_KV_PREFIXES = [512, 3072, 6144, 12288, 49152, 98304]
EXTRA_MIXED_CHUNKS = [64, 256, 1024]


@dataclass(frozen=True)
class OpPoint:
    """One row of ops.csv: `op` on `num_tokens` rows of one TP shard."""

    tp: int
    op: str
    num_tokens: int
    shape: tuple  # the shapes that determine the computation (see op_shape)

    @property
    def shape_key(self) -> tuple:
        return (*self.shape, self.num_tokens)

    @property
    def row_key(self) -> tuple:
        return (self.tp, self.op, self.num_tokens)


@dataclass(frozen=True)
class AttentionPoint:
    """One row of attention.csv: one attention launch over `composition` on one TP shard.

    composition: ((q_tokens, kv_prefix_tokens), ...) per sequence.
    """

    tp: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    composition: tuple

    @property
    def shape_key(self) -> tuple:
        return ("attention", self.num_q_heads, self.num_kv_heads, self.head_dim, self.composition)

    @property
    def row_key(self) -> tuple:
        return (self.tp, composition_json(self.composition))


@dataclass
class Grid:
    """Everything one model's profile measures."""

    ops: list[OpPoint] = field(default_factory=list)
    attention: list[AttentionPoint] = field(default_factory=list)


def composition_json(composition) -> str:
    """Canonical text of a composition, as stored in the CSV: '[[512, 1024], [1, 300]]'."""
    return json.dumps([[int(q), int(kv)] for q, kv in composition])


def parse_composition(text: str) -> tuple:
    """Inverse of composition_json; raises ValueError naming the text if it is malformed."""
    try:
        value = json.loads(text)
        comp = tuple((int(q), int(kv)) for q, kv in value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"composition {text!r} is not a JSON list of [q_tokens, kv_prefix_tokens]: {e}")
    if not comp or any(q < 1 or kv < 0 for q, kv in comp):
        raise ValueError(f"composition {text!r}: need >= 1 sequence, q_tokens >= 1, kv_prefix_tokens >= 0")
    return comp


def composition_kind(composition) -> str:
    """'decode' if every sequence computes one token, 'prefill' if none does, else 'mixed'.

    A q=1 sequence with a prefix is a decode; a prompt of one token (q=1, prefix 0) counts as a decode too,
    which is what a kernel sees.
    """
    decodes = sum(1 for q, _ in composition if q == 1)
    if decodes == len(composition):
        return "decode"
    return "prefill" if decodes == 0 else "mixed"


def tp_degrees(model: ModelConfig, candidates=(1, 2, 4, 8)) -> list[int]:
    """The TP degrees among `candidates` that shard the model's heads (ModelConfig.validate_tp)."""
    out = []
    for tp in candidates:
        try:
            model.validate_tp(tp)
        except ValueError:
            continue
        out.append(tp)
    return out


def token_counts(max_tokens: int) -> list[int]:
    """The ladder up to and including `max_tokens` (which is added if it is not on the ladder)."""
    counts = [n for n in TOKEN_LADDER if n <= max_tokens]
    if max_tokens not in counts:
        counts.append(max_tokens)
    return counts


def op_shape(model: ModelConfig, tp: int, op: str) -> tuple:
    """The shapes that determine `op`'s cost on one TP shard (the dedupe key, less the token count).

    Linear layers are keyed ("linear", in_features, out_features) whatever the op's name, since they are
    the same GEMM.
    """
    h, hd = model.hidden_size, model.head_dim
    q_heads = model.num_q_heads // tp
    kv_heads = model.kv_heads_per_gpu(tp)
    inter = model.intermediate_size // tp
    vocab_shard = -(-model.vocab_size // tp)
    shapes = {
        "qkv_proj": ("linear", h, (q_heads + 2 * kv_heads) * hd),
        "rope": ("rope", q_heads, kv_heads, hd),
        "attn_out_proj": ("linear", q_heads * hd, h),
        "mlp_up_gate": ("linear", h, 2 * inter),
        "act": ("act", inter),
        "mlp_down": ("linear", inter, h),
        "rmsnorm": ("rmsnorm", h),
        "residual_add": ("residual_add", h),
        # Sharded lookups mask ids outside the shard; at TP1 it is a plain lookup.
        "embedding": ("embedding", vocab_shard, h, tp > 1),
        "lm_head": ("linear", h, vocab_shard),
        "sampling": ("sampling", model.vocab_size),
    }
    if op not in shapes:
        raise ValueError(f"unknown op {op!r}; known: {sorted(shapes)}")
    return shapes[op]


def op_grid(model: ModelConfig, tps, ops, max_tokens: int) -> list[OpPoint]:
    """Points of ops.csv for `model`: each op x TP degree x token count."""
    points = []
    for tp in tps:
        for op in ops:
            limit = min(max_tokens, LOGIT_ROWS_MAX) if op in ("lm_head", "sampling") else max_tokens
            shape = op_shape(model, tp, op)
            points += [OpPoint(tp, op, n, shape) for n in token_counts(limit)]
    return points


def kv_capacity_tokens(model: ModelConfig, tp: int, gpu_memory_bytes: float, pp: int = 1,
                       utilization=0.9) -> int:
    """KV-cache tokens one tp x pp replica holds: what bounds a real batch's total context.

    Same sizing rule as vLLM (utilization x memory - weights); an upper bound, see REFERENCES.md.
    """
    free = utilization * gpu_memory_bytes - model.weight_bytes_per_gpu(tp, pp)
    return max(0, int(free // model.kv_bytes_per_token(tp, pp)))


def attention_grid(
    model: ModelConfig,
    tp: int,
    kv_capacity: int,
    max_layer_kv_tokens: int,
    seed: int = 0,
    tiny: bool = False,
) -> list[AttentionPoint]:
    """Attention launches for one TP shard of `model`.

    kv_capacity: total tokens (prefix + new) a batch may hold, from kv_capacity_tokens.
    max_layer_kv_tokens: a limit from the measuring GPU's memory for one layer's K and V (one launch).
    Covers: single prefill chunks with prefixes (causal in the chunk, full over the prefix), several
    chunks in one launch, decode batches of equal and of different contexts, and mixed launches.
    """
    limit_len = model.max_model_len
    kv_limit = min(kv_capacity, max_layer_kv_tokens)
    chunks = [c for c in PREFILL_CHUNKS if c <= limit_len]
    prefixes = KV_PREFIXES
    batches, contexts = DECODE_BATCHES, [c for c in DECODE_CONTEXTS if c <= limit_len]
    if tiny:
        chunks, prefixes = [c for c in (16, 64) if c <= limit_len], [0, 32, 128]
        batches, contexts = [1, 4, 16], [c for c in (16, 64, 256) if c <= limit_len]
    if limit_len not in contexts:
        contexts.append(limit_len)
    rng = random.Random(hash_seed(seed, model.max_model_len, tp))
    comps: list[tuple] = []

    # Single chunks: every prefix on the ladder that fits, plus the prefix that fills the context.
    for q in chunks:
        fits = [p for p in prefixes if q + p <= limit_len]
        if limit_len - q not in fits:
            fits.append(limit_len - q)
        comps += [((q, p),) for p in fits]
    # Several chunks in one launch (batched prompts; chunked prefill of several requests).
    for total in [c for c in (512, 2048, 8192) if c <= limit_len] if not tiny else [64]:
        for parts in (2, 4, 16):
            q = total // parts
            if q < 1:
                continue
            comps.append(tuple((q, 0) for _ in range(parts)))
            comps.append(tuple((q, rng.randint(0, limit_len - q)) for _ in range(parts)))
    # Decodes with equal contexts (prefix = context - 1 cached tokens, one new).
    for b in batches:
        comps += [tuple((1, c - 1) for _ in range(b)) for c in contexts]
    # Decodes with different contexts: uniform over the window, and a long-tailed mix.
    for b in [b for b in batches if b >= 4]:
        for _ in range(2):
            comps.append(tuple((1, rng.randint(1, limit_len - 1)) for _ in range(b)))
        comps.append(tuple((1, min(limit_len - 1, int(rng.lognormvariate(6.5, 1.2)) + 1)) for _ in range(b)))
    # Mixed: one or two prefill chunks plus decodes, as a chunked-prefill scheduler launches them.
    for chunk in [c for c in (128, 512, 2048) if c <= limit_len] if not tiny else [16]:
        for b in [b for b in batches if b >= 4]:
            for chunks_in_batch in (1, 2):
                seqs = [(chunk, rng.randint(0, limit_len - chunk)) for _ in range(chunks_in_batch)]
                seqs += [(1, rng.randint(1, limit_len - 1)) for _ in range(b)]
                comps.append(tuple(seqs))

    if not tiny:
        comps += intermediate_compositions(limit_len, chunks, prefixes, batches, contexts,
                                           random.Random(hash_seed(seed, model.max_model_len, tp, 2)))

    q_heads, kv_heads = model.num_q_heads // tp, model.kv_heads_per_gpu(tp)
    seen, points = set(), []
    for comp in comps:
        if comp in seen or sum(q + p for q, p in comp) > kv_limit:
            continue
        seen.add(comp)
        points.append(AttentionPoint(tp, q_heads, kv_heads, model.head_dim, comp))
    return points


def intermediate_compositions(limit_len: int, chunks: list, prefixes: list, batches: list, contexts: list,
                              rng: random.Random) -> list[tuple]:
    """Launches between the ladder points of attention_grid (EXTRA_* lists), for a model whose sequences
    hold at most `limit_len` tokens; the ladders given are attention_grid's own (already cut to limit_len)."""
    comps: list[tuple] = []
    all_chunks = sorted(set(chunks) | {c for c in EXTRA_PREFILL_CHUNKS if c <= limit_len})
    all_prefixes = sorted(set(prefixes) | set(EXTRA_KV_PREFIXES))
    for q in all_chunks:
        fits = [p for p in all_prefixes if q + p <= limit_len]
        comps += [((q, p),) for p in fits]
    for total in [c for c in (1024, 4096) if c <= limit_len]:
        for parts in (2, 8):
            q = total // parts
            comps.append(tuple((q, 0) for _ in range(parts)))
            comps.append(tuple((q, rng.randint(0, limit_len - q)) for _ in range(parts)))
    all_batches = sorted(set(batches) | set(EXTRA_DECODE_BATCHES))
    all_contexts = sorted(set(contexts) | {c for c in EXTRA_DECODE_CONTEXTS if c <= limit_len})
    for b in all_batches:
        comps += [tuple((1, c - 1) for _ in range(b)) for c in all_contexts]
    for b in [2] + EXTRA_DECODE_BATCHES:
        for _ in range(2):
            comps.append(tuple((1, rng.randint(1, limit_len - 1)) for _ in range(b)))
        comps.append(tuple((1, min(limit_len - 1, int(rng.lognormvariate(6.5, 1.2)) + 1)) for _ in range(b)))
    # Mostly short contexts with one long one in eight: one slow thread block among many quick ones.
    for b in [b for b in all_batches if b >= 4]:
        comps.append(tuple((1, rng.randint(limit_len // 2, limit_len - 1)) if i % 8 == 0 else
                           (1, min(limit_len - 1, int(rng.lognormvariate(5.5, 1.0)) + 1)) for i in range(b)))
    for chunk in [c for c in EXTRA_MIXED_CHUNKS if c <= limit_len]:
        for b in [b for b in batches if b >= 4]:
            seqs = [(chunk, rng.randint(0, limit_len - chunk))]
            comps.append(tuple(seqs + [(1, rng.randint(1, limit_len - 1)) for _ in range(b)]))
    for chunk in [c for c in (128, 512, 2048) if c <= limit_len]:
        for b in (1, 2):
            seqs = [(chunk, rng.randint(0, limit_len - chunk))]
            comps.append(tuple(seqs + [(1, rng.randint(1, limit_len - 1)) for _ in range(b)]))
    # Chunked prefill as a serving engine runs it: a chunk (or two) next to many decodes whose contexts
    # are mostly short (exponential around a mean drawn per launch, as iteration_compositions draws them).
    for chunk in [c for c in (64, 256, 512, 1024, 2048) if c <= limit_len]:
        for b in (8, 32, 64, 128, 256, 512):
            comps.append(((chunk, rng.choice([0, rng.randint(0, limit_len - chunk)])),)
                         + _short_decodes(rng, b, limit_len))
    for chunk in [c for c in (256, 1024) if c <= limit_len]:
        for b in (32, 128, 256):
            comps.append(((chunk, 0), (chunk, rng.randint(0, limit_len - chunk))) + _short_decodes(rng, b, limit_len))
    return comps


def _short_decodes(rng: random.Random, count: int, limit_len: int) -> tuple:
    """`count` decodes with contexts exponential around a mean of 128 .. limit_len / 2 tokens."""
    mean = rng.choice([128, 512, 1024, 2048, limit_len // 2])
    return tuple((1, max(1, min(limit_len - 1, int(rng.expovariate(1 / mean)) + 1))) for _ in range(count))


def hash_seed(*parts) -> int:
    """A deterministic seed from ints (Python's hash() of str is salted per process)."""
    value = 1469598103934665603
    for part in parts:
        value = ((value ^ int(part)) * 1099511628211) % (1 << 61)
    return value


def iteration_compositions(
    model: ModelConfig,
    count: int,
    seed: int,
    kv_capacity: int,
    max_batch_tokens: int = 8192,
    max_seqs: int = 256,
) -> list[tuple]:
    """`count` random batch compositions for whole-iteration validation (seeded, so reproducible).

    Mixes decode-only, prefill-only and mixed batches; prefill chunks carry prefixes (chunked prefill);
    total new tokens <= max_batch_tokens and total KV (prefix + new) <= kv_capacity.
    """
    rng = random.Random(seed)
    limit_len = model.max_model_len
    out = []
    while len(out) < count:
        kind = rng.choices(["decode", "prefill", "mixed"], weights=[0.35, 0.25, 0.40])[0]
        seqs = []
        if kind in ("prefill", "mixed"):
            budget = rng.choice([256, 512, 1024, 2048, 4096, max_batch_tokens])
            for _ in range(rng.randint(1, 4)):
                q = max(2, int(budget * rng.uniform(0.1, 1.0) / 2) * 2)
                prefix = rng.choice([0, 0, rng.randint(0, max(0, limit_len - q))])
                if q + prefix <= limit_len:
                    seqs.append((q, prefix))
            if not seqs:
                continue
        if kind in ("decode", "mixed"):
            decodes = rng.choice([b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= max_seqs])
            decodes = min(decodes + rng.randint(0, decodes // 2), max_seqs - len(seqs))
            mean_ctx = rng.choice([128, 512, 1024, 2048, limit_len // 2])
            seqs += [(1, max(1, min(limit_len - 1, int(rng.expovariate(1 / mean_ctx)) + 1)))
                     for _ in range(decodes)]
        new_tokens = sum(q for q, _ in seqs)
        kv_total = sum(q + p for q, p in seqs)
        if seqs and new_tokens <= max_batch_tokens and kv_total <= kv_capacity:
            out.append(tuple(seqs))
    return out
