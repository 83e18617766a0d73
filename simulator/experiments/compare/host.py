"""The host terms of an engine profile (CPU overhead per iteration, launch floors) as real executions
show them: measured over runs, fitted on them (also leave one run out), or chosen by the CLI's options."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.experiments.compare.metrics import cpu_overhead_fit, host_time_line, iteration_replay
from simulator.experiments.compare.runs import PredictorCache, read_run, run_config


def pooled_cpu_overhead(run_dirs: list[Path], eager_floor_s: float | None = None) -> dict:
    """CPU-overhead numbers of all runs together (JSON-ready): the fit of cpu_overhead_fit over every
    decode iteration replayed from a CUDA graph, the median of each host part, and the host time to
    launch one eager (op-by-op) forward pass."""
    steps = pd.concat([pd.read_parquet(Path(d) / "steps.parquet") for d in run_dirs], ignore_index=True)
    fit = cpu_overhead_fit(steps)
    graph, eager = steps[steps["path"] == "graph"], steps[steps["path"] == "eager"]
    exposed = (graph["duration_s"] - graph["gpu_s"]).to_numpy()
    return {
        "how": ("simulator.experiments.compare.pooled_cpu_overhead over the steps.parquet of every run: exposed = "
                "iteration time (scheduling to tokens applied) - CUDA-event span of the forward pass and "
                "sampling"),
        "runs": len(run_dirs), "iterations": len(steps), "graph_iterations": len(graph),
        "eager_iterations": len(eager),
        "decode_graph_exposed_ms": {"median": float(np.median(exposed) * 1e3),
                                    "p10": float(np.percentile(exposed, 10) * 1e3),
                                    "p90": float(np.percentile(exposed, 90) * 1e3)},
        "decode_graph_fit": {"fixed_ms": fit["fixed_s"] * 1e3,
                             "per_sequence_ms": fit["per_sequence_s"] * 1e3},
        "median_host_part_ms": fit["median_part_ms"],
        "eager_launch_ms": {"median": float(eager["launch_s"].median() * 1e3),
                            "p10": float(eager["launch_s"].quantile(0.1) * 1e3),
                            "p90": float(eager["launch_s"].quantile(0.9) * 1e3)},
        "eager_floor_ms": None if eager_floor_s is None else eager_floor_s * 1e3,
    }


def measured_cpu_overhead_s(run_dirs: list[Path]) -> float:
    """Median host time the GPU waits per iteration (iteration time - GPU span) over every decode
    iteration replayed from a CUDA graph in these runs: the CPU-overhead constant real execution shows."""
    exposed = []
    for run_dir in run_dirs:
        steps = pd.read_parquet(Path(run_dir) / "steps.parquet")
        graph = steps[steps["path"] == "graph"]
        exposed.append((graph["duration_s"] - graph["gpu_s"]).to_numpy())
    values = np.concatenate(exposed) if exposed else np.empty(0)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise ValueError("no CUDA-graph iterations with a GPU span in these runs: "
                         "cannot measure the CPU overhead")
    return float(np.median(values))


@dataclass
class HostSamples:
    """What one run shows of its engine's host terms (simulator/runtime/cpu_overhead.py).

    graph_batch, graph_exposed_s: batch size and exposed host time (iteration - GPU span) of every decode
    iteration replayed from a full CUDA graph; launched[path] for "eager" and "piecewise": the GPU span,
    the runtime model's kernel time (no host terms) and the host's launch time of every such iteration."""

    num_layers: int
    graph_batch: np.ndarray
    graph_exposed_s: np.ndarray
    launched: dict


def host_samples(run_dir: Path, predictors: PredictorCache) -> HostSamples:
    run = read_run(Path(run_dir))
    cfg = run_config(run["config"])
    gpu_only = predictors.get(cfg, 0.0)
    steps = run["steps"]
    graph = steps[steps["path"] == "graph"]
    launched = {}
    for path in ("eager", "piecewise"):
        rows = steps[steps["path"] == path]
        predicted = np.empty(0)
        if len(rows):
            comp = run["compositions"][run["compositions"]["iteration"].isin(rows["iteration"])]
            replay = iteration_replay(comp, lambda q, kv, p=gpu_only: p.stage_times_s(q, kv)[0])
            predicted = replay[rows["iteration"].to_numpy()]
        launched[path] = (rows["gpu_s"].to_numpy(), predicted, rows["launch_s"].to_numpy())
    return HostSamples(cfg.model.num_layers, graph["batch_size"].to_numpy(dtype=float),
                       (graph["duration_s"] - graph["gpu_s"]).to_numpy(), launched)


def launch_floor_s(samples: list[HostSamples], path: str) -> float | None:
    """GPU span of a forward pass that launching bounds, on `path`: the median span of the iterations the
    runtime model predicts shorter than the median host launch time of one forward pass; None when no
    iteration is launch-bound."""
    spans, predicted, launches = (np.concatenate([s.launched[path][i] for s in samples]) for i in range(3))
    if len(spans) == 0:
        return None
    bound = predicted < np.median(launches)
    return float(np.median(spans[bound])) if bound.any() else None


def measured_eager_floor_s(run_dirs: list[Path], predictors: PredictorCache) -> float:
    """The eager (op-by-op) launch floor of a forward pass these runs show (launch_floor_s)."""
    floor = launch_floor_s([host_samples(r, predictors) for r in run_dirs], "eager")
    if floor is None:
        raise ValueError("no launch-bound eager iterations in these runs: cannot measure an eager floor")
    return floor


def fit_host_terms(samples: list[HostSamples]) -> dict:
    """An engine profile's host terms (milliseconds, EngineProfile field names) fitted on these runs:
    exposed host time = fixed + per sequence x batch over decode graph iterations (least squares), and the
    launch floor per layer of each launch path that shows launch-bound iterations (0 where none does)."""
    layers = {s.num_layers for s in samples}
    if len(layers) != 1:
        raise ValueError(f"host terms need runs of one layer count, got {sorted(layers)}")
    num_layers = layers.pop()
    batch = np.concatenate([s.graph_batch for s in samples])
    exposed = np.concatenate([s.graph_exposed_s for s in samples])
    line = host_time_line(batch, exposed)
    if line is None:
        raise ValueError("fewer than 3 decode graph iterations of two batch sizes: cannot fit the CPU overhead")
    terms = {"cpu_overhead_ms": max(0.0, line[0] * 1e3), "cpu_overhead_per_sequence_ms": max(0.0, line[1] * 1e3)}
    for path, name in (("eager", "eager_launch_ms_per_layer"), ("piecewise", "piecewise_launch_ms_per_layer")):
        floor = launch_floor_s(samples, path)
        terms[name] = 0.0 if floor is None else floor / num_layers * 1e3
    return terms


def host_terms(cpu_option: str, floor_option: str, runs: list[Path], predictors: PredictorCache):
    """(host fields replacing each run's engine profile's, or None to keep them; a sentence saying what
    they are) from the two CLI options."""
    if cpu_option == "default" and floor_option == "default":
        return None, "the host terms of the engine profile each run executed (conf/engine/)"
    terms, setting = {}, "each run's engine profile's CPU overhead"
    if cpu_option == "measured":
        fixed = measured_cpu_overhead_s(runs)
        terms = {"cpu_overhead_ms": fixed * 1e3, "cpu_overhead_per_sequence_ms": 0.0}
        setting = f"the measured CPU overhead, {fixed * 1e3:.3f} ms per iteration"
    elif cpu_option != "default":
        if cpu_option in ("vllm_v0", "servesim_execute"):
            from simulator.engine import load_engine_profile

            named = load_engine_profile(cpu_option)
            terms = {"cpu_overhead_ms": named.cpu_overhead_ms,
                     "cpu_overhead_per_sequence_ms": named.cpu_overhead_per_sequence_ms}
        else:
            try:
                terms = {"cpu_overhead_ms": float(cpu_option) * 1e3, "cpu_overhead_per_sequence_ms": 0.0}
            except ValueError:
                raise SystemExit(f"--cpu-overhead {cpu_option!r}: expected default, measured, vllm_v0, "
                                 f"servesim_execute or seconds") from None
        setting = (f"a CPU overhead of {terms['cpu_overhead_ms']:.3f} ms + "
                   f"{terms['cpu_overhead_per_sequence_ms']:.4f} ms per sequence")
    if floor_option == "measured":
        layers = {json.loads((Path(r) / "config.json").read_text())["model"]["num_layers"] for r in runs}
        if len(layers) != 1:
            raise SystemExit(f"--eager-floor measured needs runs of one layer count, got {sorted(layers)}")
        terms["eager_launch_ms_per_layer"] = measured_eager_floor_s(runs, predictors) / layers.pop() * 1e3
    elif floor_option == "none":
        terms["eager_launch_ms_per_layer"] = terms["piecewise_launch_ms_per_layer"] = 0.0
    elif floor_option != "default":
        try:
            terms["eager_launch_ms_per_layer"] = float(floor_option) * 1e3
        except ValueError:
            raise SystemExit(f"--eager-floor {floor_option!r}: expected default, measured, none or "
                             f"seconds per layer") from None
    floor = terms.get("eager_launch_ms_per_layer")
    if floor is None:
        setting += ", and the engine profile's launch floors"
    elif floor > 0:
        setting += f", and an eager-launch floor of {floor:.4f} ms per layer for batches launched op by op"
    else:
        setting += ", and no launch floors"
    return terms, setting


def held_out_host_terms(runs: list[Path], predictors: PredictorCache) -> dict:
    """Each run's host terms fitted on every other run (leave one run out), so that no run is scored with
    host terms measured on itself."""
    samples = {run: host_samples(run, predictors) for run in runs}
    return {run: fit_host_terms([s for other, s in samples.items() if other != run]) for run in runs}
