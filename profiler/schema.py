"""Column layout of the profile tables under data/profiles/ (the profiler writes, the runtime model reads).

Layout on disk:
  data/profiles/<gpu>/<model>/ops.csv.gz      token-wise ops of one layer (and embedding, LM head, sampling)
  data/profiles/<gpu>/<model>/attention.csv.gz  attention launches of one layer
  data/profiles/<gpu>/<model>/meta.json       how it was made: GPU, driver, CUDA, torch, backend, date, command,
                                              repeatability check, measured peaks, time spent per op family
  data/profiles/<gpu>/comm/comm.csv           NCCL all_reduce and send_recv (model independent)
  data/profiles/<gpu>/comm/meta.json
  data/validation/<gpu>/<model>/iterations.csv  whole-model forward passes of random batch compositions
                                              (iterations_split.csv: the same with split attention launches)

A model's two kernel tables are stored gzipped; while the profiler appends to one it is the plain .csv
(profiler/tables.py, ResumableCsv). Readers find either through `table_path`.

All times are milliseconds on one GPU (one TP shard): median over repeats, with p10/p90 spread.
"""
from pathlib import Path

# Kept as <name>.gz between profiler runs: as plain CSV they were half the repository's bytes (the attention
# tables' composition strings most of it); gzip shrinks an attention table about 6x, an ops table 3x.
OPS_CSV = "ops.csv"
ATTENTION_CSV = "attention.csv"

# Every timed row carries these.
TIMING_COLUMNS = ["time_ms", "p10_ms", "p90_ms", "repeats"]

# ops.csv: one row per (tp, op, num_tokens).
#   op in OP_NAMES; num_tokens = rows the op processes (for lm_head/sampling: rows of logits computed).
#   flops / bytes = work the op must do and the fewest bytes it must move, for achieved tflops / tbps.
OPS_COLUMNS = ["tp", "op", "num_tokens", *TIMING_COLUMNS, "flops", "bytes", "tflops", "tbps"]
OP_NAMES = [
    "qkv_proj",        # [n, hidden] x [hidden, (q_heads + 2 kv_heads)/tp * head_dim]
    "rope",            # rotary embedding on this shard's q and k
    "attn_out_proj",   # [n, q_heads/tp * head_dim] x [.., hidden]
    "mlp_up_gate",     # [n, hidden] x [hidden, 2 * intermediate/tp] (gated MLP: up and gate fused)
    "act",             # silu(gate) * up over [n, intermediate/tp]
    "mlp_down",        # [n, intermediate/tp] x [.., hidden]
    "rmsnorm",         # one norm over [n, hidden] (a layer runs two)
    "residual_add",    # one add over [n, hidden] (a layer runs two)
    "embedding",       # lookup of n tokens in a vocab/tp shard
    "lm_head",         # [n, hidden] x [hidden, vocab/tp]: n = sequences (last tokens) or all tokens
    "sampling",        # softmax + sampling over [n, vocab] (full vocab, after the gather)
]

# attention.csv: one row per attention launch (one layer, one TP shard).
#   kind: "prefill" (only chunks), "decode" (only q=1 rows), "mixed" (both in one launch)
#   composition: JSON list of [q_tokens, kv_prefix_tokens] per sequence, e.g. [[512, 1024], [1, 300]];
#     q_tokens new tokens attend causally among themselves and fully over the kv_prefix_tokens cached.
#   the summary columns are derived from composition, for reading and plotting.
ATTENTION_COLUMNS = [
    "tp", "num_q_heads", "num_kv_heads", "head_dim", "kind", "backend", "composition",
    "batch_size", "num_prefills", "num_decodes", "q_tokens_total", "kv_tokens_total",
    "max_q_tokens", "max_kv_tokens",
    *TIMING_COLUMNS, "flops", "bytes", "tflops", "tbps",
]

# comm.csv: op in {"all_reduce", "send_recv"}; bytes = message size per GPU.
COMM_COLUMNS = ["op", "world_size", "dtype", "bytes", *TIMING_COLUMNS, "algbw_gbps", "busbw_gbps"]

# iterations.csv: a whole forward pass (embedding, all layers, LM head on last tokens, sampling) of one
# batch composition, on real kernels with random bf16 weights.
#   time_ms (and p10/p90): the step replayed as one CUDA graph (GPU time, no launch gaps, as ops were timed);
#   eager_time_ms (added by the profiler, last column): the same step launched op by op from Python, so the
#   difference shows the CPU launch overhead a runtime model must add when graphs are not used.
ITERATION_COLUMNS = [
    "model", "tp", "num_layers", "composition", "batch_size", "q_tokens_total", "kv_tokens_total",
    *TIMING_COLUMNS, "eager_time_ms",
]
# Whole forwards launched as an engine profile says (profiler/iterations.py): split attention adds the
# time of the same step launched as piecewise CUDA graphs (NaN past the largest capture size).
SPLIT_ITERATION_COLUMNS = [*ITERATION_COLUMNS, "piecewise_time_ms", "piecewise_tokens"]


def iteration_file_names(attention_launch: str) -> tuple[str, str]:
    """(iterations table, meta file) of an attention launch mode inside data/validation/<gpu>/<model>/."""
    if attention_launch == "fused_varlen":
        return "iterations.csv", "meta.json"
    return f"iterations_{attention_launch}.csv", f"meta_{attention_launch}.json"


def table_path(directory: Path, name: str) -> Path:
    """The file holding table `name` (e.g. "attention.csv") in `directory`: `name`.gz when that exists,
    else `name` (which may not exist either). pandas reads both alike."""
    compressed = Path(directory) / f"{name}.gz"
    return compressed if compressed.exists() else Path(directory) / name
