"""servesim-profile: measure kernel tables on this machine's GPU (or CPU).

  servesim-profile check                                  environment + attention correctness per backend
  servesim-profile profile --models llama-3-8b mistral-7b ops.csv.gz/attention.csv.gz/meta.json per model
  servesim-profile iterations --models llama-3-8b --tp 1  whole-forward validation timings
  servesim-profile comm                                   NCCL all_reduce / send_recv (all visible GPUs)
  servesim-profile probe-attention --out probe.json       which kernels launch mixed batches, and their cost

Every command resumes: rerun it after an interruption and finished rows are skipped.
Only torch, numpy, pandas, yaml and simulator.config/paths are imported (the GPU machine has no hydra/simpy).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
import yaml

from simulator.config import ConfigError, ModelConfig, from_dict, load_model_config
from simulator.paths import DATA_DIR, PROFILES_DIR

ALL_MODELS = ["llama-2-7b", "llama-3-8b", "mistral-7b", "yi-34b", "llama-2-70b", "llama-3-70b"]


def load_model(name_or_path: str) -> ModelConfig:
    """A conf/model name (llama-3-8b) or a path to a YAML with ModelConfig's fields."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"model file {path} does not exist")
        with path.open() as f:
            return from_dict(ModelConfig, yaml.safe_load(f) or {}, str(path))
    return load_model_config(name_or_path)


def _device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu")
    return device


def _dtype(text: str | None, device: torch.device) -> torch.dtype:
    """--dtype, defaulting to bf16 on GPUs and float32 on CPUs (most CPUs emulate bf16 matmuls slowly)."""
    if text is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if text not in table:
        raise SystemExit(f"--dtype {text}: expected one of {sorted(table)}")
    return table[text]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    p.add_argument("--dtype", default=None, help="bfloat16 (GPU default), float16, float32 (CPU default)")
    p.add_argument("--gpu", default=None, help="directory label (default: h100/h200/... from the device, or cpu)")
    p.add_argument("--backend", default=None, choices=["flash_attn", "torch_flash", "sdpa_masked"],
                   help="attention backend (default: the first that passes the correctness check)")
    p.add_argument("--time-limit-s", type=float, default=None,
                   help="stop cleanly after this many seconds (rerun the command to resume)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servesim-profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="print environment facts and each attention backend's error vs a reference")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)

    p = sub.add_parser("profile", help="ops.csv.gz + attention.csv.gz + meta.json per model")
    _common(p)
    p.add_argument("--models", "--model", nargs="+", default=None,
                   help=f"conf/model names or YAML paths (default: all: {' '.join(ALL_MODELS)})")
    p.add_argument("--tp", nargs="+", type=int, default=None,
                   help="TP degrees (those that divide the heads are used; default 1 2 4 8, --tiny: 1)")
    p.add_argument("--out", type=Path, default=PROFILES_DIR)
    p.add_argument("--ops", nargs="+", default=None, help="subset of profiler.schema.OP_NAMES")
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--tiny", action="store_true",
                   help="small grid (<= 64 tokens, short contexts): a quick CPU demonstration or smoke test")
    p.add_argument("--max-tokens", type=int, default=None, help="top of the ops token grid")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per point (GPU 10, CPU 5)")
    p.add_argument("--repeat-sample", type=int, default=40, help="points re-timed for the repeatability check")

    p = sub.add_parser("iterations", help="whole forward passes of random batch compositions")
    _common(p)
    p.add_argument("--models", "--model", nargs="+", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--out", type=Path, default=DATA_DIR / "validation")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--num-layers", type=int, default=None, help="fewer layers than the model (CPU demos)")
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--kv-capacity-tokens", type=int, default=None,
                   help="KV-cache size (default: GPU memory left after weights and 10 GiB headroom)")
    p.add_argument("--attention-launch", default="fused_varlen", choices=["fused_varlen", "split"],
                   help="one varlen attention launch per layer, or a prefill and a decode launch "
                        "(iterations_split.csv, with piecewise-graph timings too)")
    p.add_argument("--piecewise-max-tokens", type=int, default=512,
                   help="split runs: largest piecewise CUDA-graph capture size (0: no piecewise timing)")

    p = sub.add_parser("probe-attention", help="mixed-batch attention kernels on this GPU (profiler/attention_probe.py)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True, help="JSON report")

    p = sub.add_parser("comm", help="NCCL all_reduce and send_recv over all visible GPUs")
    p.add_argument("--out", type=Path, default=PROFILES_DIR)
    p.add_argument("--gpu", default=None)
    p.add_argument("--ops", nargs="+", default=["all_reduce", "send_recv"])
    p.add_argument("--hidden", nargs="+", type=int, default=[4096, 7168, 8192])
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda: NCCL over GPUs; cpu: gloo between CPU processes (demonstration)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "servesim-profile " + shlex.join(argv)
    try:
        return {"check": _check, "profile": _profile, "iterations": _iterations, "comm": _comm,
                "probe-attention": _probe_attention}[args.command](
            args, command)
    except ConfigError as e:
        raise SystemExit(f"error: {e}")


def _check(args, command) -> int:
    from profiler.attention import candidate_backends, check_backend
    from profiler.env import environment

    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    report = {"environment": environment(device), "checks": []}
    for name in candidate_backends(device):
        try:
            report["checks"].append(check_backend(name, device, dtype))
        except (RuntimeError, ImportError, NotImplementedError) as e:
            report["checks"].append({"backend": name, "passed": False, "error": str(e)[:300]})
    print(json.dumps(report, indent=2, default=str))
    return 0 if any(c["passed"] for c in report["checks"]) else 1


def _label(args, device) -> str:
    from profiler.env import gpu_label
    return args.gpu or gpu_label(device)


def _profile(args, command) -> int:
    from profiler.model_profile import ProfileRequest, run_profile
    from profiler.schema import OP_NAMES
    from profiler.timing import TimingSettings

    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    models = [load_model(m) for m in (args.models or ALL_MODELS)]
    ops = args.ops or list(OP_NAMES)
    unknown = set(ops) - set(OP_NAMES)
    if unknown:
        raise SystemExit(f"--ops: unknown {sorted(unknown)}; known: {OP_NAMES}")
    if device.type == "cuda":
        settings = TimingSettings(repeats=args.repeats or 10)
    else:
        settings = TimingSettings(warmup_calls=1, repeats=args.repeats or 5, use_graphs=False)
    tps = args.tp or ([1] if args.tiny else [1, 2, 4, 8])
    req = ProfileRequest(models=models, tps=tps, out_dir=args.out, gpu=_label(args, device), device=device,
                         dtype=dtype, ops=ops, attention=not args.no_attention, tiny=args.tiny,
                         max_tokens=args.max_tokens, settings=settings, backend=args.backend,
                         repeat_sample=args.repeat_sample, time_limit_s=args.time_limit_s, command=command,
                         seed=args.seed)
    run = run_profile(req)
    return 0 if run["complete"] else 3


def _iterations(args, command) -> int:
    import time

    from profiler.iterations import run_iterations

    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    started, complete = time.perf_counter(), True
    for name in args.models:
        left = None
        if args.time_limit_s:
            left = args.time_limit_s - (time.perf_counter() - started)
            if left <= 0:
                complete = False
                break
        run = run_iterations(load_model(name), args.tp, args.out, _label(args, device), device, count=args.count,
                             seed=args.seed, dtype=dtype, backend=args.backend, num_layers=args.num_layers,
                             max_batch_tokens=args.max_batch_tokens, kv_capacity_tokens=args.kv_capacity_tokens,
                             time_limit_s=left, command=command, attention_launch=args.attention_launch,
                             piecewise_max_tokens=args.piecewise_max_tokens)
        complete = complete and run["complete"]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0 if complete else 3


def _probe_attention(args, command) -> int:
    from profiler.attention_probe import probe

    probe(torch.device(args.device), args.out)
    return 0


def _comm(args, command) -> int:
    from profiler.comm import message_sizes, run_comm

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("comm --device cuda: torch sees no CUDA device here; use --device cpu")
    gpu = args.gpu or _label(args, torch.device(args.device))
    run_comm(args.out, gpu, ops=args.ops, sizes=message_sizes(tuple(args.hidden), args.max_tokens),
             repeats=args.repeats, use_graphs=not args.no_graphs, command=command, world_size=args.world_size,
             device_type=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
