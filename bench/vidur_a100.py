"""Our transferred A100 kernel times against Vidur's measured A100 linear-op tables.

    PYTHONPATH=. python bench/vidur_a100.py vidur=<a clone of github.com/microsoft/vidur>

Vidur (MIT licence, Microsoft) ships per-op CUDA times of vLLM's kernels on A100 and H100 under
data/profiling/compute/<gpu>/<hf id>/mlp.csv; nothing of it is copied here, the script reads a clone.
For llama-2-7b and llama-3-8b at tp=1 and each token count both tables hold, it prints per op:
  transferred  our H100 tables transferred to the A100 (simulator/runtime/transfer.py) vs Vidur's A100;
  H100 setup   our measured H100 vs Vidur's H100 (where Vidur has the model): how far the two
               measurement setups (kernels, library versions) differ before any transfer;
  slowdown     our A100/H100 ratio vs Vidur's: the transfer's own error, the setup difference cancelled.
Errors are |ours / Vidur - 1| in %, median and P95 over token counts, and the mean signed error.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.config import load_hardware_config, load_model_config
from simulator.paths import PROFILES_DIR
from simulator.runtime.tables import profile_files, read_meta
from simulator.runtime.transfer import transfer_ops, transfer_pair

MODELS = {"llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-3-8b": "meta-llama/Meta-Llama-3-8B"}
# Vidur's op name -> ours
OPS = {"attn_pre_proj": "qkv_proj", "attn_post_proj": "attn_out_proj", "mlp_up_proj": "mlp_up_gate",
       "mlp_down_proj": "mlp_down", "input_layernorm": "rmsnorm", "mlp_act": "act", "add": "residual_add",
       "attn_rope": "rope", "emb": "embedding"}


def vidur_table(vidur: Path, gpu: str, hf_id: str) -> pd.DataFrame | None:
    """Long table (op, num_tokens, time_ms) of Vidur's tp=1 rows (median times), or None if absent."""
    path = vidur / "data" / "profiling" / "compute" / gpu / hf_id / "mlp.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path)
    frame = frame[frame["num_tensor_parallel_workers"] == 1]
    rows = [pd.DataFrame({"op": ours, "num_tokens": frame["num_tokens"], "time_ms": frame[f"time_stats.{theirs}.median"]})
            for theirs, ours in OPS.items() if f"time_stats.{theirs}.median" in frame.columns]
    return pd.concat(rows).groupby(["op", "num_tokens"], as_index=False)["time_ms"].median()


def ours(model_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measured H100, transferred A100) ops rows at tp=1."""
    h100, a100 = load_hardware_config("h100"), load_hardware_config("a100")
    files = profile_files(load_model_config(model_name), h100, PROFILES_DIR)
    measured = pd.read_csv(files.ops_csv)
    measured = measured[measured["tp"] == 1]
    attention = pd.read_csv(files.attention_csv)
    source, target = transfer_pair(h100, a100, read_meta(files.meta_json), attention)
    return measured, transfer_ops(measured, source, target)


def _line(label: str, signed: np.ndarray) -> str:
    absolute = np.abs(signed)
    return (f"| {label} | {len(signed)} | {np.median(absolute):.1f} | {np.percentile(absolute, 95):.1f} | "
            f"{np.mean(signed):+.1f} |")


def main(argv: list[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    if "vidur" not in args:
        print(__doc__, file=sys.stderr)
        return 2
    vidur = Path(args["vidur"])
    lines = []
    for model_name, hf_id in MODELS.items():
        vidur_a100, vidur_h100 = vidur_table(vidur, "a100", hf_id), vidur_table(vidur, "h100", hf_id)
        if vidur_a100 is None:
            continue
        measured, transferred = ours(model_name)
        keys = ["op", "num_tokens"]
        both = transferred[[*keys, "time_ms"]].merge(vidur_a100, on=keys, suffixes=("_ours", "_vidur"))
        both = both.merge(measured[[*keys, "time_ms"]].rename(columns={"time_ms": "h100_ours"}), on=keys)
        if vidur_h100 is not None:
            both = both.merge(vidur_h100.rename(columns={"time_ms": "h100_vidur"}), on=keys, how="left")
        lines += [f"### {model_name} (tp=1; token counts 1-{int(both['num_tokens'].max())} both tables hold)", "",
                  "| op | comparison | counts | median % | P95 % | mean signed % |", "|---|---|---|---|---|---|"]
        for op in OPS.values():
            sub = both[both["op"] == op]
            if sub.empty:
                continue
            comparisons = [("transferred A100 vs Vidur A100", sub["time_ms_ours"] / sub["time_ms_vidur"])]
            if "h100_vidur" in sub and sub["h100_vidur"].notna().any():
                s = sub[sub["h100_vidur"].notna()]
                comparisons += [("H100 setup: ours vs Vidur", s["h100_ours"] / s["h100_vidur"]),
                                ("A100/H100 slowdown: ours vs Vidur",
                                 (s["time_ms_ours"] / s["h100_ours"]) / (s["time_ms_vidur"] / s["h100_vidur"]))]
            for label, ratio in comparisons:
                lines.append(_line(f"{op} | {label}", (ratio.to_numpy(dtype=float) - 1) * 100))
        lines.append("")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
