"""servesim-predict: the predicted time of one batch, total and broken down.

    servesim-predict model=llama-2-7b hardware=h100 batch="[[4096,0],[1,1024]]"
    servesim-predict model=llama-3-8b hardware=h100 tp=2 pp=2 cpu_overhead_ms=0 batch="[[1,512]]" --json
    servesim-predict model=llama-3-8b hardware=h100 engine=vllm_v0 batch="[[256,0],[1,2048]]"

batch: JSON list of [q_tokens, kv_tokens] per sequence (tokens computed this iteration, tokens already
cached). tp, pp default to 1; engine (conf/engine: how the batch is launched, its host terms) defaults to
vllm_v1; cpu_overhead_ms replaces the engine's host terms by a constant (0 = none).
profiles_dir= reads tables from another directory than data/profiles; cache_dir= keeps fitted models
elsewhere than .cache/runtime.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from simulator.config import ConfigError
from simulator.runtime.predictor import BREAKDOWN_KEYS, predict_batch

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


def format_table(result) -> str:
    """Human-readable total, breakdown and stages (ms)."""
    lines = [f"engine           {result.engine}", f"total            {result.total_ms:10.3f} ms"]
    for key in BREAKDOWN_KEYS:
        lines.append(f"  {key:<16}{result.breakdown_ms[key]:10.3f} ms")
    lines.append("stages           " + "  ".join(f"{ms:.3f}" for ms in result.stage_ms) + " ms")
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
