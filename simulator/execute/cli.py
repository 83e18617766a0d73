"""servesim-execute: serve a trace on a real GPU with the simulator's own policies (no simpy, no Hydra).

One run:
    servesim-execute --model llama-3-8b --hardware h100 --policy sarathi --policy-param chunk_size=512 \\
        --workload conversation --num-requests 200 --rate-qps 4.3 --out runs/sarathi512
    servesim-execute --config runs/sarathi512/config.json --out runs/again      # replay a saved config

A fidelity plan (simulator/execute/plan.py writes it; cells run in the plan's order, each skipped when
its predicted time would pass the deadline, the results packed after every cell):
    servesim-execute --plan data/validation/h100/fidelity/plan.json --out runs/fidelity \\
        --deadline-s 540 --pack results/fidelity.tar.gz

Then compare with the simulator: servesim-compare runs/fidelity (see docs/fidelity.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path


def parse_value(text: str):
    """'512' -> 512, '0.5' -> 0.5, 'null' -> None, 'true' -> True, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"{flag} {pair!r}: expected name=value")
        name, value = pair.split("=", 1)
        out[name] = parse_value(value)
    return out


def config_from_args(args):
    """A SimulationConfig from the flags (or from --config)."""
    from simulator.run import SimulationConfig

    if args.config:
        return with_engine(SimulationConfig.from_dict(json.loads(Path(args.config).read_text())), args.engine)
    from simulator.config import _load_yaml
    from simulator.workload import load_workload_config

    workload = load_workload_config(args.workload, **parse_pairs(args.workload_param, "--workload-param"))
    if args.num_requests:
        workload.num_requests = args.num_requests
    _, cluster = _load_yaml("cluster", args.cluster)
    cfg = SimulationConfig.from_dict({
        "model": args.model, "hardware": args.hardware, "cluster": cluster, "engine": args.engine or "servesim_execute",
        "policy": {"name": args.policy, **parse_pairs(args.policy_param, "--policy-param")},
        "workload": workload, "seed": args.seed,
    })
    if args.rate_qps:
        from simulator.experiments.capacity import native_rate_qps, with_rate

        cfg = with_rate(cfg, args.rate_qps, cfg.workload.num_requests, native_rate_qps(cfg))
    return cfg


def with_engine(cfg, engine: str | None, hardware: str | None = None):
    """cfg launched as conf/engine/<engine>.yaml says, on conf/hardware/<hardware>.yaml (each unchanged when
    None); the run's saved config.json then names them, so servesim-compare simulates what ran."""
    import dataclasses

    from simulator.config import load_hardware_config
    from simulator.engine import load_engine_profile

    if engine is not None:
        cfg = dataclasses.replace(cfg, engine=load_engine_profile(engine))
    if hardware is not None:
        cfg = dataclasses.replace(cfg, hardware=load_hardware_config(hardware))
    return cfg


def pack(results: Path, archive: Path) -> None:
    """Tar-gzip `results` into `archive`, replacing it only once the new archive is complete."""
    from simulator.atomic import write_atomically

    def write(temp: Path) -> None:
        with tarfile.open(temp, "w:gz") as tar:
            tar.add(results, arcname=results.name)

    write_atomically(archive, write)


def run_plan(args, log) -> int:
    from simulator.execute.loop import ExecutionTimeout
    from simulator.execute.serve import build_runner, caches_prefixes, run_execution, warm_up
    from simulator.run import SimulationConfig

    started = time.perf_counter()
    plan = json.loads(Path(args.plan).read_text())
    cells = plan["cells"]
    if args.cells:
        wanted = tuple(args.cells.split(","))
        cells = [c for c in cells if c["name"].startswith(wanted)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [with_engine(SimulationConfig.from_dict(c["config"]), args.engine, args.as_hardware) for c in cells]
    # One runner serves every cell: its prefix store is there if any cell's policy caches prefixes.
    runner = build_runner(configs[0], args.device, args.num_layers, not args.no_cuda_graphs,
                          args.kv_capacity_tokens, log=log,
                          prefix_store=any(caches_prefixes(c.policy) for c in configs))
    warm_s = warm_up(runner)
    log(f"warm-up {warm_s:.1f} s")
    _write_environment(out, args, runner, warm_s)
    done, skipped, failed = [], [], []
    for cell, cfg in zip(cells, configs):
        elapsed = time.perf_counter() - started
        predicted_s = cell_seconds(cell, args.clock)
        estimate = predicted_s * args.estimate_margin + 3.0
        if args.deadline_s and elapsed + estimate > args.deadline_s:
            log(f"skip {cell['name']}: predicted {estimate:.0f} s would pass the deadline "
                f"({elapsed:.0f} of {args.deadline_s:.0f} s used)")
            skipped.append(cell["name"])
            continue
        if (cfg.model.name, cfg.hardware.name) != (configs[0].model.name, configs[0].hardware.name):
            raise SystemExit(f"plan cell {cell['name']} uses another model or GPU than the first cell")
        cell_dir = out / cell["name"]
        t = time.perf_counter()
        # A cell far slower than simulated is abandoned (so are cells running past the deadline), so the
        # command ends on its own with every finished cell packed.
        stop_at = t + max(3.0 * predicted_s, 60.0)
        if args.deadline_s:
            stop_at = min(stop_at, started + args.deadline_s + args.deadline_grace_s)
        try:
            summary = run_execution(cfg, runner, cell_dir, clock=args.clock, progress=args.progress,
                                    stop_at=stop_at)
        except ExecutionTimeout as e:
            log(f"abandoned {cell['name']} after {time.perf_counter() - t:.0f} s: {e}")
            runner.release(runner.slot_holders)
            shutil.rmtree(cell_dir, ignore_errors=True)
            skipped.append(cell["name"])
            continue
        except Exception:  # noqa: BLE001 - one failing cell must not lose the plan's other cells
            log(f"FAILED {cell['name']}:\n{traceback.format_exc()}")
            runner.release(runner.slot_holders)
            shutil.rmtree(cell_dir, ignore_errors=True)
            failed.append(cell["name"])
            continue
        if not args.keep_trace:
            (cell_dir / "trace.json").unlink(missing_ok=True)
        log(f"{cell['name']}: {summary['completed']} requests in {summary['simulated_s']:.1f} s served "
            f"({time.perf_counter() - t:.1f} s wall, simulated {cell.get('predicted_served_s', 0):.1f} s); "
            + _versus(summary, cell.get("predicted", {})))
        done.append(cell["name"])
        _write_cells(out, done, skipped, failed)
        if args.pack:
            pack(out, Path(args.pack))
    _write_cells(out, done, skipped, failed)
    if args.pack:
        pack(out, Path(args.pack))
    log(f"plan finished in {time.perf_counter() - started:.0f} s: {len(done)} cells run, "
        f"{len(skipped)} skipped, {len(failed)} failed")
    return 1 if failed else 0


def cell_seconds(cell: dict, clock: str) -> float:
    """Host seconds a plan cell is predicted to take: its busy time on the busy clock (idle gaps are
    skipped), else its whole serving time."""
    if clock == "busy" and "predicted_busy_s" in cell:
        return cell["predicted_busy_s"]
    return cell.get("predicted_served_s", 0.0)


def _write_cells(out: Path, done: list, skipped: list, failed: list) -> None:
    cells = {"done": done, "skipped": skipped, "failed": failed}
    (out / "cells.json").write_text(json.dumps(cells, indent=2) + "\n")


def _versus(summary: dict, predicted: dict) -> str:
    """'TTFT p50 120 ms (sim 115), ...' for a quick look at a cell's result against the plan's simulation."""
    parts = []
    for key, label, block, stat in (("ttft_s_p50", "TTFT p50", "ttft_s", "p50"),
                                    ("tbt_s_p99", "TBT p99", "tbt_s", "p99"),
                                    ("e2e_s_p50", "E2E p50", "e2e_s", "p50")):
        measured = summary[block][stat]
        sim = predicted.get(key)
        text = f"{label} {measured * 1e3:.0f} ms" if measured is not None else f"{label} -"
        parts.append(text + (f" (sim {sim * 1e3:.0f})" if sim is not None else ""))
    return ", ".join(parts)


def _write_environment(out: Path, args, runner, warm_s: float) -> None:
    import torch

    from profiler.env import environment

    facts = {"environment": environment(torch.device(args.device)), "command": " ".join(sys.argv),
             "model_build_s": runner.build_s, "warm_up_s": warm_s,
             "attention_check_error": runner.attention_check_error}
    (out / "environment.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="servesim-execute", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result directory (one sub-directory per plan cell)")
    parser.add_argument("--plan", help="fidelity plan JSON (simulator/execute/plan.py)")
    parser.add_argument("--cells", help="comma-separated plan cell names or name prefixes to run, e.g. "
                        "'conversation' (default: all, in plan order)")
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="plan mode: start no cell whose predicted time would end past this many seconds")
    parser.add_argument("--deadline-grace-s", type=float, default=30.0,
                        help="plan mode: a cell still running this long past the deadline is abandoned")
    parser.add_argument("--estimate-margin", type=float, default=1.3,
                        help="plan mode: factor on each cell's predicted serving time for the deadline check")
    parser.add_argument("--pack", help="plan mode: tar.gz the results here after every cell")
    parser.add_argument("--config", help="a saved config.json (from an earlier run) instead of the flags")
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--cluster", default="single")
    parser.add_argument("--policy", default="vllm")
    parser.add_argument("--policy-param", action="append", help="name=value, repeatable")
    parser.add_argument("--workload", default="conversation")
    parser.add_argument("--workload-param", action="append", help="name=value, repeatable")
    parser.add_argument("--num-requests", type=int)
    parser.add_argument("--rate-qps", type=float, help="mean arrival rate (a trace is compressed/stretched)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--clock", default="busy", choices=("busy", "wall"))
    parser.add_argument("--num-layers", type=int, help="build fewer layers (tests; not the model's timings)")
    parser.add_argument("--kv-capacity-tokens", type=int,
                        help="KV slot rows on the device (default: the simulated cache's size, or what fits)")
    parser.add_argument("--engine", help="launch batches as conf/engine/<ENGINE>.yaml says (attention launch, "
                        "CUDA graphs); executable: servesim_execute (default for one run), "
                        "servesim_execute_piecewise; in plan mode it overrides the cells' engine")
    parser.add_argument("--as-hardware", help="plan mode: run the cells as on conf/hardware/<NAME>.yaml (the KV "
                        "cache's size, and the GPU the comparison simulates), e.g. a plan made for h100 on an H200")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run decode batches eagerly too")
    parser.add_argument("--keep-trace", action="store_true", help="plan mode: keep each cell's trace.json")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if args.plan:
        return run_plan(args, log)
    from simulator import metrics
    from simulator.execute.serve import build_runner, run_execution, warm_up

    cfg = config_from_args(args)
    runner = build_runner(cfg, args.device, args.num_layers, not args.no_cuda_graphs, args.kv_capacity_tokens,
                          log=log)
    log(f"warm-up {warm_up(runner):.1f} s")
    summary = run_execution(cfg, runner, args.out, clock=args.clock, progress=args.progress)
    print(metrics.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
