"""Tables of what an iteration costs as a function of one count: the token count N (token-wise kernels,
all-reduces, sends) or the sequence count (LM head, sampling, logits gather). Built once per predictor
from a FittedRuntime and the communication tables; the predictor (simulator/runtime/pricing.py) combines
them per pipeline stage so that pricing a batch is a few list look-ups.
"""
from __future__ import annotations

import numpy as np

from simulator.config import ConfigError, ModelConfig
from simulator.runtime.comm import comm_curve
from simulator.runtime.fitted import GRID_DENSE_TOKENS, FittedRuntime

LINEAR_OPS = ("qkv_proj", "attn_out_proj", "mlp_up_gate", "mlp_down")
# Per layer: two norms and two residual adds (before attention and before the MLP).
LAYER_OTHER_OPS = {"rope": 1, "act": 1, "rmsnorm": 2, "residual_add": 2}


def layers_per_stage(num_layers: int, pp: int) -> np.ndarray:
    """Layers of each pipeline stage: an even split, earlier stages taking the remainder."""
    if pp < 1 or pp > num_layers:
        raise ConfigError(f"cluster.pp={pp} must be between 1 and the model's {num_layers} layers")
    base, extra = divmod(num_layers, pp)
    return np.array([base + (1 if s < extra else 0) for s in range(pp)], dtype=np.float64)


class TokenTable:
    """Something that depends only on a token (or sequence) count, tabulated on the fit grid."""

    def __init__(self, grid_tokens: np.ndarray, values: np.ndarray):
        self.grid = np.asarray(grid_tokens, dtype=np.float64)
        self.values = np.asarray(values, dtype=np.float64)
        # List indexing is the fastest lookup; dense[n] is the value at count n (the grid starts at 1).
        self.dense = [0.0] + self.values[:GRID_DENSE_TOKENS].tolist()

    def at(self, n: int) -> float:
        """Value at count `n` (exact grid value, interpolated, or linear beyond the grid)."""
        if n <= GRID_DENSE_TOKENS:
            return self.dense[n]
        if n <= self.grid[-1]:
            return float(np.interp(n, self.grid, self.values))
        return float(self.values[-1] * n / self.grid[-1])

    ms = at  # the op tables (op_tables) hold milliseconds


def op_tables(fitted: FittedRuntime, model: ModelConfig, pp: int, comm_frame=None, comm_path=None,
              communication: bool = True) -> dict[str, TokenTable]:
    """Milliseconds of each op category by token count (LM head, sampling and the logits gather: by
    sequence count), uncalibrated, for one GPU of a tp x `pp` replica. communication=False leaves the
    all-reduces and sends out (zero tables)."""
    grid, ops = fitted.grid_tokens, fitted.op_ms
    activation_bytes = grid * model.hidden_size * model.dtype_bytes  # N tokens x hidden
    zeros = np.zeros_like(grid)
    all_reduce = send = None
    if communication and (fitted.tp > 1 or pp > 1) and comm_frame is None:
        raise ConfigError("tp > 1 or pp > 1 needs the communication tables (comm.csv)")
    if communication and fitted.tp > 1:
        all_reduce = comm_curve(comm_frame, comm_path, "all_reduce", fitted.tp)
    if communication and pp > 1:
        send = comm_curve(comm_frame, comm_path, "send_recv", 2)
    layer_comm = 2 * all_reduce.ms(activation_bytes) if all_reduce else zeros
    # All-gather of per-rank logits shards (n x vocab/tp) moves as many bytes per rank as an
    # all-reduce of tp/2 shards; the tables hold all-reduce, so use that equivalent size.
    logits_bytes = grid * -(-model.vocab_size // fitted.tp) * model.dtype_bytes * fitted.tp / 2
    return {
        "linear": TokenTable(grid, sum(ops[o] for o in LINEAR_OPS)),
        "layer_other": TokenTable(grid, sum(k * ops[o] for o, k in LAYER_OTHER_OPS.items())),
        "layer_comm": TokenTable(grid, layer_comm),
        "embedding": TokenTable(grid, ops["embedding"]),
        "embedding_comm": TokenTable(grid, all_reduce.ms(activation_bytes) if all_reduce else zeros),
        "final_norm": TokenTable(grid, ops["rmsnorm"]),
        "lm_head_sampling": TokenTable(grid, ops["lm_head"] + ops["sampling"]),
        "logits_comm": TokenTable(grid, all_reduce.ms(logits_bytes) if all_reduce else zeros),
        "send": TokenTable(grid, send.ms(activation_bytes) if send else zeros),
    }
