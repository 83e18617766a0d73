"""servesim-predict: the predicted time of one batch, total and broken down.

    servesim-predict model=llama-2-7b hardware=h100 batch="[[4096,0],[1,1024]]"
    servesim-predict model=llama-3-8b hardware=h100 tp=2 pp=2 cpu_overhead_ms=0 batch="[[1,512]]" --json
    servesim-predict model=llama-3-8b hardware=h100 engine=vllm_v0 batch="[[256,0],[1,2048]]"

batch: JSON list of [q_tokens, kv_tokens] per sequence (tokens computed this iteration, tokens already
cached): whole numbers, q_tokens >= 1, kv_tokens >= 0, together within the model's max_model_len. tp, pp default to 1; engine (conf/engine: how the batch is launched, its host terms) defaults to
vllm_v1; cpu_overhead_ms replaces the engine's host terms by a constant (0 = none).
profiles_dir= reads tables from another directory than data/profiles; cache_dir= keeps fitted models
elsewhere than .cache/runtime.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from simulator.config import ConfigError, ModelConfig, load_model_config
from simulator.paths import DATA_DIR
from simulator.runtime.predictor import BREAKDOWN_KEYS, _config, predict_batch
from simulator.runtime.transfer import validation_words

USAGE = ('usage: servesim-predict model=NAME hardware=NAME batch="[[q,kv],...]" '
         "[tp=1] [pp=1] [engine=vllm_v1] [cpu_overhead_ms=X] [--json]")
KEYS = {"model": str, "hardware": str, "batch": json.loads, "tp": int, "pp": int, "cpu_overhead_ms": float,
        "engine": str,
        "profiles_dir": Path, "cache_dir": Path}


def parse_args(argv: list[str]) -> tuple[dict, bool]:
    """key=value arguments (and --json) -> (values, as_json); ValueError naming the bad argument."""
    values, as_json = {}, False
    for arg in argv:
        if arg == "--json":
            as_json = True
            continue
        key, sep, text = arg.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or key not in KEYS:
            raise ValueError(f"unknown argument {arg!r}; expected key=value with key in {sorted(KEYS)}")
        try:
            values[key] = KEYS[key](text)
        except ValueError as e:
            raise ValueError(f"argument {key}={text!r}: {e}") from None
    missing = [k for k in ("model", "hardware", "batch") if k not in values]
    if missing:
        raise ValueError(f"missing argument(s): {', '.join(missing)}")
    return values, as_json


def check_batch(batch, max_model_len: int) -> None:
    """ValueError naming the sequence unless `batch` is a non-empty list of [q_tokens, kv_tokens] pairs of
    whole numbers (JSON integers: 1.5 or true is a mistake, not a count), q_tokens >= 1, kv_tokens >= 0,
    and q_tokens + kv_tokens within the model's context."""
    if not isinstance(batch, list) or not batch:
        raise ValueError(f"batch must be a non-empty list of [q_tokens, kv_tokens], got {batch!r}")
    for i, pair in enumerate(batch):
        where = f"batch[{i}]={json.dumps(pair)}"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{where}: expected a pair [q_tokens, kv_tokens]")
        q, kv = pair
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in pair) or q < 1 or kv < 0:
            raise ValueError(f"{where}: expected whole numbers q_tokens >= 1 and kv_tokens >= 0")
        if q + kv > max_model_len:
            raise ValueError(f"{where}: q_tokens + kv_tokens = {q + kv} exceeds the model's "
                             f"max_model_len={max_model_len}")


def format_table(result) -> str:
    """Human-readable total, breakdown and stages (ms)."""
    lines = [f"engine           {result.engine}", f"total            {result.total_ms:10.3f} ms"]
    for key in BREAKDOWN_KEYS:
        lines.append(f"  {key:<16}{result.breakdown_ms[key]:10.3f} ms")
    lines.append("stages           " + "  ".join(f"{ms:.3f}" for ms in result.stage_ms) + " ms")
    if result.transferred_from:
        validation = validation_words(result.transferred_from, DATA_DIR / "validation" / "gpu_transfer.json")
        lines.append(f"kernel times transferred from {result.transferred_from} profiles (no measured profile of "
                     f"this GPU; {validation + '; ' if validation else ''}docs/gpu_transfer.md)")
    if result.calibration:
        c = result.calibration
        lines.append(f"kernel times calibrated x{c['scale']:.4f} + {c['per_layer_ms'] * 1e3:.1f} us per layer "
                     f"({c['source']}; docs/runtime_model.md)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        values, as_json = parse_args(argv)
        check_batch(values["batch"], _config(ModelConfig, load_model_config, values["model"]).max_model_len)
        if "cache_dir" in values:
            values["cache_directory"] = values.pop("cache_dir")
        result = predict_batch(values.pop("model"), values.pop("hardware"), values.pop("batch"), **values)
    except (ValueError, ConfigError) as e:
        print(f"servesim-predict: {e}\n{USAGE}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_json()) if as_json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
