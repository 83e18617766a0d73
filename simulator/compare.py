"""servesim-compare: how close the simulator comes to real execution of the same configuration.

For every run directory written by servesim-execute (config.json, requests/token_times/steps/
compositions parquet) it simulates the very same config (same trace slice, rate, policy, KV size, seed)
and compares:
  latency     median, P90, P99 of TTFT, TBT (every inter-token gap) and end-to-end latency
  throughput  completed requests and output tokens per second over the makespan
  iterations  matched one to one: each executed batch (its exact composition) is replayed through the
              runtime model; predicted vs measured iteration time (with the engine profile's host terms)
              and predicted GPU time (no host terms) vs the measured GPU span
The simulator prices iterations as the run's engine ran them (config.json's `engine`; runs recorded
before engine profiles existed ran servesim_execute). With --held-out the host terms (CPU overhead per
iteration, launch floors) are fitted on the other runs only (leave one run out), so the table is out of
sample.
Errors are signed, (simulated - measured) / measured in %; "abs" columns are their magnitudes.

    servesim-compare data/validation/h100/fidelity/runs --markdown docs/fidelity_results.md \\
        --figures docs/figures/fidelity --out results/fidelity
    # + how far two executions of the same cells are from each other (run-to-run table):
    servesim-compare data/validation/h100/fidelity/runs --repeats data/validation/h100/fidelity/repeat/runs \\
        --markdown docs/fidelity_results/default.md
    servesim-compare data/validation/h100/fidelity/piecewise/runs --held-out \\
        --markdown docs/fidelity_results/piecewise.md
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LATENCY_METRICS = ("ttft_s", "tbt_s", "e2e_s")
PERCENTILES = (50, 90, 99)
# The targets: per-iteration median |error| <= 5 %; these within 10 % at every load up to 85 %.
ITERATION_TARGET_PCT = 5.0
LATENCY_TARGET_PCT = 10.0
TARGET_METRICS = ("ttft_s_p50", "tbt_s_p99", "e2e_s_p50")
RUN_FILES = ("config.json", "requests.parquet", "token_times.parquet", "steps.parquet",
             "compositions.parquet")


# ----------------------------------------------------------------------------- pure metrics


def tbt_gaps_from_tokens(token_times: pd.DataFrame) -> np.ndarray:
    """Every gap between consecutive tokens of the same request (s), from a token_times table
    (request_id, token_index, time_s)."""
    ordered = token_times.sort_values(["request_id", "token_index"], kind="stable")
    times = ordered["time_s"].to_numpy(dtype=np.float64)
    owner = ordered["request_id"].to_numpy()
    same = owner[1:] == owner[:-1]
    return np.diff(times)[same]


def latency_metrics(requests: pd.DataFrame, token_times: pd.DataFrame) -> dict:
    """{ttft_s_p50, ..., e2e_s_p99, throughput_rps, output_tokens_per_s, completed} from a requests
    table (metrics.request_table columns) and its token_times table."""
    done = requests[~requests["rejected"].astype(bool) & requests["completed_s"].notna()]
    values = {"ttft_s": done["ttft_s"].to_numpy(), "e2e_s": done["e2e_s"].to_numpy(),
              "tbt_s": tbt_gaps_from_tokens(token_times[token_times["request_id"].isin(done["request_id"])])}
    out = {}
    for metric in LATENCY_METRICS:
        finite = values[metric][np.isfinite(values[metric])]
        for p in PERCENTILES:
            out[f"{metric}_p{p}"] = float(np.percentile(finite, p)) if len(finite) else float("nan")
    makespan = float(done["completed_s"].max() - requests["arrived_s"].min()) if len(done) else float("nan")
    out["throughput_rps"] = len(done) / makespan if makespan > 0 else float("nan")
    tokens = float(done["output_tokens"].sum())
    out["output_tokens_per_s"] = tokens / makespan if makespan > 0 else float("nan")
    out["completed"] = len(done)
    return out


def signed_error_pct(simulated: float, measured: float) -> float:
    """(simulated - measured) / measured in %; NaN when measured is 0 or either is missing."""
    if not (np.isfinite(simulated) and np.isfinite(measured)) or measured == 0:
        return float("nan")
    return (simulated - measured) / measured * 100.0


def iteration_replay(compositions: pd.DataFrame, predict) -> np.ndarray:
    """predict(q_tokens, kv_tokens) -> seconds for each executed iteration's exact batch, in iteration
    order (compositions: iteration, request_id, num_tokens, kv_tokens)."""
    comp = compositions.sort_values("iteration", kind="stable")
    iteration = comp["iteration"].to_numpy()
    q, kv = comp["num_tokens"].to_numpy(), comp["kv_tokens"].to_numpy()
    bounds = np.flatnonzero(np.diff(iteration)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(iteration)]])
    out = np.full(int(iteration.max()) + 1 if len(iteration) else 0, np.nan)
    for s, e in zip(starts.tolist(), ends.tolist()):
        out[iteration[s]] = predict(q[s:e], kv[s:e])
    return out


def abs_error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict:
    """Median, P90 and mean signed of the per-item error (predicted - measured) / measured, in %."""
    ok = np.isfinite(predicted) & np.isfinite(measured) & (measured > 0)
    err = (predicted[ok] - measured[ok]) / measured[ok] * 100.0
    if len(err) == 0:
        nan = float("nan")
        return {"n": 0, "median_abs_pct": nan, "p90_abs_pct": nan, "mean_signed_pct": nan}
    return {"n": len(err), "median_abs_pct": float(np.median(np.abs(err))),
            "p90_abs_pct": float(np.percentile(np.abs(err), 90)), "mean_signed_pct": float(err.mean())}


def iteration_kind(steps: pd.DataFrame) -> np.ndarray:
    """prefill / decode / mixed of each executed iteration."""
    prefill, decode = steps["num_prefill_tokens"].to_numpy() > 0, steps["num_decode_tokens"].to_numpy() > 0
    return np.where(prefill & decode, "mixed", np.where(prefill, "prefill", "decode"))


def host_time_line(batch_size: np.ndarray, exposed_s: np.ndarray) -> tuple[float, float] | None:
    """Least squares of exposed host time = fixed + per_sequence x batch size over the finite samples:
    (fixed_s, per_sequence_s), or None with fewer than 3 of them or a single batch size."""
    ok = np.isfinite(exposed_s)
    if ok.sum() < 3 or len(np.unique(batch_size[ok])) < 2:
        return None
    design = np.column_stack([np.ones(int(ok.sum())), batch_size[ok]])
    (fixed, per_sequence), *_ = np.linalg.lstsq(design, exposed_s[ok], rcond=None)
    return float(fixed), float(per_sequence)


def cpu_overhead_fit(steps: pd.DataFrame) -> dict:
    """Host time the GPU waits for per iteration, from graph-replayed (decode) iterations, where the GPU
    span is the pure GPU time: least squares of (duration - gpu) = fixed + per_sequence x batch (s), plus
    medians of each host part over all iterations (ms)."""
    parts = {name: float(steps[name].median() * 1e3) for name in
             ("schedule_s", "prepare_s", "launch_s", "sync_s", "apply_s")}
    graph = steps[steps["path"] == "graph"]
    fit = {"fixed_s": float("nan"), "per_sequence_s": float("nan"), "iterations": len(graph)}
    exposed = (graph["duration_s"] - graph["gpu_s"]).to_numpy()
    line = host_time_line(graph["batch_size"].to_numpy(dtype=float), exposed)
    if line is not None:
        fit.update(fixed_s=line[0], per_sequence_s=line[1], median_exposed_ms=float(np.median(exposed) * 1e3))
    eager = steps[steps["path"] == "eager"]
    if len(eager):
        exposed = (eager["duration_s"] - eager["gpu_s"]).to_numpy()
        fit["eager_median_exposed_ms"] = float(np.median(exposed) * 1e3)
    return {"median_part_ms": parts, **fit}


# ----------------------------------------------------------------------------- one run


@dataclass
class RunComparison:
    """One executed run against its simulation."""

    name: str
    labels: dict  # trace, policy, load, rate_qps, num_requests (from the run's config and plan)
    measured: dict  # latency_metrics of the execution
    simulated: dict  # latency_metrics of the simulation
    iterations: pd.DataFrame  # executed steps + predicted_s, predicted_gpu_s, kind
    cpu: dict  # cpu_overhead_fit of the execution
    samples: dict  # arrays for plots: {"measured"|"simulated": {"ttft_s", "tbt_s", "e2e_s", "iteration_s"}}

    def errors(self) -> dict:
        keys = [f"{m}_p{p}" for m in LATENCY_METRICS for p in PERCENTILES] + ["throughput_rps",
                                                                              "output_tokens_per_s"]
        return {k: signed_error_pct(self.simulated[k], self.measured[k]) for k in keys}

    def iteration_errors(self) -> dict:
        it = self.iterations
        return {"total": abs_error_stats(it["predicted_s"].to_numpy(), it["duration_s"].to_numpy()),
                "gpu": abs_error_stats(it["predicted_gpu_s"].to_numpy(), it["gpu_s"].to_numpy())}

    def row(self) -> dict:
        """One flat row for the summary table."""
        row = {"run": self.name, **self.labels}
        for k, v in self.measured.items():
            row[f"measured_{k}"] = v
        for k, v in self.simulated.items():
            row[f"simulated_{k}"] = v
        for k, v in self.errors().items():
            row[f"error_pct_{k}"] = v
        for part, stats in self.iteration_errors().items():
            for k, v in stats.items():
                row[f"iteration_{part}_{k}"] = v
        for kind, group in self.iterations.groupby("kind"):
            stats = abs_error_stats(group["predicted_s"].to_numpy(), group["duration_s"].to_numpy())
            row[f"iteration_total_{kind}_median_abs_pct"] = stats["median_abs_pct"]
            row[f"iteration_{kind}_count"] = stats["n"]
        row["cpu_fixed_ms"] = self.cpu["fixed_s"] * 1e3
        row["cpu_per_sequence_ms"] = self.cpu["per_sequence_s"] * 1e3
        row["cpu_graph_iterations"] = self.cpu["iterations"]
        row["cpu_eager_median_exposed_ms"] = self.cpu.get("eager_median_exposed_ms", float("nan"))
        for part, ms in self.cpu["median_part_ms"].items():
            row[f"cpu_median_{part.removesuffix('_s')}_ms"] = ms
        return row


def read_run(run_dir: Path) -> dict:
    """The files of one execution; raises FileNotFoundError naming the missing one."""
    for name in RUN_FILES:
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name}: not found (is {run_dir} a servesim-execute run?)")
    return {
        "config": json.loads((run_dir / "config.json").read_text()),
        "requests": pd.read_parquet(run_dir / "requests.parquet"),
        "token_times": pd.read_parquet(run_dir / "token_times.parquet"),
        "steps": pd.read_parquet(run_dir / "steps.parquet"),
        "compositions": pd.read_parquet(run_dir / "compositions.parquet"),
    }


def run_labels(run_dir: Path, config: dict) -> dict:
    """trace, policy label, load and rate of a run: from the plan next to the runs when there is one."""
    for plan_path in (run_dir.parent / "plan.json", run_dir.parent.parent / "plan.json"):
        if plan_path.exists():
            cells = {c["name"]: c for c in json.loads(plan_path.read_text())["cells"]}
            if run_dir.name in cells:
                c = cells[run_dir.name]
                keys = ("trace", "policy", "load", "rate_qps", "num_requests", "capacity_qps")
                return {k: c[k] for k in keys}
    policy = config["policy"]
    label = policy["name"] + (str(policy["chunk_size"]) if policy.get("chunk_size") else "")
    trace = config["workload"].get("name") or Path(str(config["workload"].get("trace") or "synthetic")).stem
    return {"trace": trace, "policy": label, "load": float("nan"),
            "rate_qps": float("nan"), "num_requests": config["workload"].get("num_requests"),
            "capacity_qps": float("nan")}


RECORDED_BEFORE_ENGINE_PROFILES = "servesim_execute"


def run_config(config: dict):
    """The SimulationConfig a run executed. Runs recorded before engine profiles existed have no `engine`
    in config.json: they ran servesim_execute (fused varlen attention, decode-only CUDA graphs)."""
    from simulator.run import SimulationConfig

    return SimulationConfig.from_dict({"engine": RECORDED_BEFORE_ENGINE_PROFILES, **config})


class PredictorCache:
    """One fitted predictor per (model, hardware, engine profile, CPU overhead) - fits are the slow part."""

    def __init__(self):
        self._cache = {}

    def get(self, cfg, cpu_overhead_s):
        from simulator.run import build_predictor

        key = (cfg.model.name, cfg.hardware.name, cfg.predictor, cfg.engine, cpu_overhead_s)
        if key not in self._cache:
            self._cache[key] = build_predictor(dataclasses.replace(cfg, cpu_overhead_s=cpu_overhead_s))
        return self._cache[key]


def pooled_cpu_overhead(run_dirs: list[Path], eager_floor_s: float | None = None) -> dict:
    """CPU-overhead numbers of all runs together (JSON-ready): the fit of cpu_overhead_fit over every
    decode iteration replayed from a CUDA graph, the median of each host part, and the host time to
    launch one eager (op-by-op) forward pass."""
    steps = pd.concat([pd.read_parquet(Path(d) / "steps.parquet") for d in run_dirs], ignore_index=True)
    fit = cpu_overhead_fit(steps)
    graph, eager = steps[steps["path"] == "graph"], steps[steps["path"] == "eager"]
    exposed = (graph["duration_s"] - graph["gpu_s"]).to_numpy()
    return {
        "how": ("simulator.compare.pooled_cpu_overhead over the steps.parquet of every run: exposed = "
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


def simulate(cfg, predictor):
    """simulator.run.run_simulation's simulation of cfg, with the given iteration-time predictor:
    (requests table, token_times table, iteration durations in s)."""
    from simulator import metrics
    from simulator.cluster import simulate as simulate_cluster
    from simulator.kv_cache import kv_cache_blocks_per_gpu
    from simulator.request import RequestState
    from simulator.run import policy_factory
    from simulator.workload import load_workload

    workload = load_workload(cfg.workload, cfg.seed)
    requests = RequestState.create(workload.arrived_s, workload.prompt_tokens, workload.output_tokens,
                                   cfg.model.max_model_len, content=workload.content)
    out = simulate_cluster(requests, policy_factory(cfg.policy, hardware=cfg.hardware), predictor,
                           kv_cache_blocks_per_gpu(cfg.model, cfg.hardware, cfg.cluster),
                           block_size=cfg.cluster.block_size, num_replicas=cfg.cluster.num_replicas,
                           router=cfg.cluster.router, kv_watermark=cfg.cluster.kv_watermark, seed=cfg.seed)
    return (metrics.request_table(out.records), metrics.token_times_table(out.records),
            np.asarray(out.iterations.duration_s))


def compare_run(run_dir: str | Path, predictors: PredictorCache | None = None,
                host_terms: dict | None = None) -> RunComparison:
    """Simulate the run's config and compare (see the module docstring). host_terms: None keeps the host
    terms of the engine profile the run executed; a dict of EngineProfile host fields replaces them."""
    run_dir = Path(run_dir)
    predictors = predictors or PredictorCache()
    run = read_run(run_dir)
    cfg = run_config(run["config"])
    if host_terms:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, **host_terms))
    predictor = predictors.get(cfg, cfg.cpu_overhead_s)
    gpu_only = predictors.get(cfg, 0.0)
    sim_requests, sim_tokens, sim_iteration_s = simulate(cfg, predictor)
    measured = latency_metrics(run["requests"], run["token_times"])
    simulated = latency_metrics(sim_requests, sim_tokens)

    steps = run["steps"].copy()
    comp = run["compositions"]
    steps["predicted_s"] = iteration_replay(comp, lambda q, kv: predictor.stage_times_s(q, kv)[0])
    steps["predicted_gpu_s"] = iteration_replay(comp, lambda q, kv: gpu_only.stage_times_s(q, kv)[0])
    steps["kind"] = iteration_kind(steps)

    def samples(requests, tokens, iteration_s):
        done = requests[requests["completed_s"].notna()]
        return {"ttft_s": done["ttft_s"].to_numpy(), "e2e_s": done["e2e_s"].to_numpy(),
                "tbt_s": tbt_gaps_from_tokens(tokens), "iteration_s": np.asarray(iteration_s)}

    return RunComparison(
        name=run_dir.name, labels=run_labels(run_dir, run["config"]), measured=measured, simulated=simulated,
        iterations=steps, cpu=cpu_overhead_fit(steps),
        samples={"measured": samples(run["requests"], run["token_times"], steps["duration_s"]),
                 "simulated": samples(sim_requests, sim_tokens, sim_iteration_s)},
    )


def find_runs(roots: list[Path]) -> list[Path]:
    """Run directories (holding config.json and steps.parquet) under `roots`, sorted by name."""
    found = set()
    for root in roots:
        root = Path(root)
        for config in [root / "config.json", *root.rglob("config.json")]:
            if config.exists() and (config.parent / "steps.parquet").exists():
                found.add(config.parent)
    return sorted(found)


# ----------------------------------------------------------------------------- report


def summary_table(comparisons: list[RunComparison]) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in comparisons])


def _pct(x) -> str:
    return "-" if not np.isfinite(x) else f"{x:+.1f}"


def _abs(x) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1f}"


def _ms(x) -> str:
    return "-" if not np.isfinite(x) else f"{x * 1e3:.0f}"


LATENCY_INTRO = (
    "Signed error (simulated - measured) / measured in %. Targets: |error| <= {target:g} % for median TTFT, "
    "P99 TBT and median E2E (bold where missed). Measured values in ms (E2E in s).")
LATENCY_HEADER = ("| run | load | rate req/s | reqs | TTFT p50 ms | err p50 | err p90 | err p99 | "
                  "TBT p99 ms | err p50 | err p90 | err p99 | E2E p50 s | err p50 | err p90 | err p99 | "
                  "err req/s | err tok/s |")
ITERATION_INTRO = (
    "Each executed batch replayed through the runtime model. total: predicted (with its CPU-overhead term) "
    "vs the measured iteration (scheduling to tokens applied). GPU: predicted without CPU term vs the "
    "CUDA-event span of the forward pass and sampling. Target: median |error| <= {target:g} % (total).")
ITERATION_HEADER = ("| run | iterations | graph share | total median abs % | total P90 abs % | "
                    "total mean signed % | prefill | decode | mixed | GPU median abs % | GPU mean signed % |")
CPU_INTRO = (
    "Medians per iteration (ms) of each host part; exposed = iteration time minus GPU span. The fit is "
    "exposed = fixed + per-sequence x batch over decode iterations replayed from CUDA graphs.")
CPU_HEADER = ("| run | schedule | prepare | launch | sync wait | apply | decode fit fixed ms | per seq ms | "
              "eager exposed median ms |")


def markdown_report(table: pd.DataFrame) -> str:
    """The accuracy tables (Markdown) from summary_table's rows."""
    lines = ["## Latency and throughput: simulated vs measured", "",
             LATENCY_INTRO.format(target=LATENCY_TARGET_PCT), "", LATENCY_HEADER, "|---" * 18 + "|"]

    def flag(row, key):
        text = _pct(row[f"error_pct_{key}"])
        if key in TARGET_METRICS and np.isfinite(row[f"error_pct_{key}"]) and \
                abs(row[f"error_pct_{key}"]) > LATENCY_TARGET_PCT:
            return f"**{text}**"
        return text

    for _, r in table.iterrows():
        lines.append(
            f"| {r['run']} | {_load(r['load'])} | {_abs(r['rate_qps'])} | {int(r['measured_completed'])} | "
            f"{_ms(r['measured_ttft_s_p50'])} | {flag(r, 'ttft_s_p50')} | {flag(r, 'ttft_s_p90')} | "
            f"{flag(r, 'ttft_s_p99')} | {_ms(r['measured_tbt_s_p99'])} | {flag(r, 'tbt_s_p50')} | "
            f"{flag(r, 'tbt_s_p90')} | {flag(r, 'tbt_s_p99')} | {r['measured_e2e_s_p50']:.2f} | "
            f"{flag(r, 'e2e_s_p50')} | {flag(r, 'e2e_s_p90')} | {flag(r, 'e2e_s_p99')} | "
            f"{flag(r, 'throughput_rps')} | {flag(r, 'output_tokens_per_s')} |")
    lines += ["", "## Iteration time, matched batch by batch", "",
              ITERATION_INTRO.format(target=ITERATION_TARGET_PCT), "", ITERATION_HEADER, "|---" * 11 + "|"]
    for _, r in table.iterrows():
        median = r["iteration_total_median_abs_pct"]
        missed = np.isfinite(median) and median > ITERATION_TARGET_PCT
        cell = f"**{_abs(median)}**" if missed else _abs(median)
        graph_share = r["cpu_graph_iterations"] / max(r["iteration_total_n"], 1)
        lines.append(
            f"| {r['run']} | {int(r['iteration_total_n'])} | {graph_share:.0%} | {cell} | "
            f"{_abs(r['iteration_total_p90_abs_pct'])} | {_pct(r['iteration_total_mean_signed_pct'])} | "
            f"{_abs(r.get('iteration_total_prefill_median_abs_pct', np.nan))} | "
            f"{_abs(r.get('iteration_total_decode_median_abs_pct', np.nan))} | "
            f"{_abs(r.get('iteration_total_mixed_median_abs_pct', np.nan))} | "
            f"{_abs(r['iteration_gpu_median_abs_pct'])} | {_pct(r['iteration_gpu_mean_signed_pct'])} |")
    lines += ["", "## Measured CPU overhead of the real execution", "", CPU_INTRO, "", CPU_HEADER,
              "|---" * 9 + "|"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['run']} | {r['cpu_median_schedule_ms']:.3f} | {r['cpu_median_prepare_ms']:.3f} | "
            f"{r['cpu_median_launch_ms']:.3f} | {r['cpu_median_sync_ms']:.2f} | "
            f"{r['cpu_median_apply_ms']:.3f} | "
            f"{_num(r['cpu_fixed_ms'], 3)} | {_num(r['cpu_per_sequence_ms'], 4)} | "
            f"{_num(r['cpu_eager_median_exposed_ms'], 2)} |")
    return "\n".join(lines) + "\n"


RUN_TO_RUN_INTRO = (
    "The same cell (config, trace slice, arrivals) executed twice on the GPU. second vs first: "
    "(second - first) / first in %, how far the measurement itself moves between runs. Then the simulator's "
    "signed error against each run.")
RUN_TO_RUN_HEADER = ("| run | TTFT p50 ms first / second | second vs first | sim vs first / second | "
                     "TBT p99 ms first / second | second vs first | sim vs first / second | "
                     "E2E p50 s first / second | second vs first | sim vs first / second |")


def run_to_run_rows(comparisons: list[RunComparison], repeat_root: Path) -> list[dict]:
    """For every compared run with a repeat of the same name under repeat_root: the target metrics of both
    executions and the simulation."""
    repeats = {d.name: d for d in find_runs([repeat_root])}
    rows = []
    for c in comparisons:
        if c.name not in repeats:
            continue
        repeat = read_run(repeats[c.name])
        second = latency_metrics(repeat["requests"], repeat["token_times"])
        rows.append({"run": c.name, **{f"{key}_{which}": values[key] for key in TARGET_METRICS
                                       for which, values in (("first", c.measured), ("second", second),
                                                             ("simulated", c.simulated))}})
    return rows


def run_to_run_markdown(rows: list[dict]) -> str:
    lines = ["## Run to run", "", RUN_TO_RUN_INTRO, "", RUN_TO_RUN_HEADER, "|---" * 10 + "|"]
    for r in rows:
        cells = [r["run"]]
        for key, scale, digits in (("ttft_s_p50", 1e3, 0), ("tbt_s_p99", 1e3, 0), ("e2e_s_p50", 1.0, 2)):
            first, second, sim = r[f"{key}_first"], r[f"{key}_second"], r[f"{key}_simulated"]
            cells += [f"{first * scale:.{digits}f} / {second * scale:.{digits}f}",
                      _pct(signed_error_pct(second, first)),
                      f"{_pct(signed_error_pct(sim, first))} / {_pct(signed_error_pct(sim, second))}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _load(x) -> str:
    return "-" if not np.isfinite(x) else f"{x:.0%}"


def _num(x, digits) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def targets_summary(table: pd.DataFrame) -> dict:
    """Which targets hold in how many runs (loads <= 85 %)."""
    within = table[table["load"].fillna(0) <= 0.85 + 1e-9]
    out = {"runs": len(within)}
    for key in TARGET_METRICS:
        errors = within[f"error_pct_{key}"].abs()
        out[f"{key}_within_{LATENCY_TARGET_PCT:g}pct"] = int((errors <= LATENCY_TARGET_PCT).sum())
    out[f"iteration_median_within_{ITERATION_TARGET_PCT:g}pct"] = int(
        (within["iteration_total_median_abs_pct"] <= ITERATION_TARGET_PCT).sum())
    return out


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="servesim-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path,
                        help="servesim-execute run directories, or folders holding them")
    parser.add_argument("--out", type=Path, help="write summary.csv, iterations.parquet, targets.json here")
    parser.add_argument("--markdown", type=Path, help="write the accuracy tables (Markdown) here")
    parser.add_argument("--figures", type=Path, help="write the fidelity figures (PNG) here")
    parser.add_argument("--cpu-overhead", default="default",
                        help="CPU overhead per iteration the simulator uses: 'default' (the engine profile's, "
                             "as in the runs' configs), 'measured' (the median the executions show on decode "
                             "iterations), 'vllm_v0' (Vidur's vLLM v0 line), or seconds")
    parser.add_argument("--repeats", type=Path,
                        help="a folder of second executions of some of the same cells (same run names): adds "
                             "a run-to-run table to the Markdown report")
    parser.add_argument("--held-out", action="store_true",
                        help="fit the host terms (CPU overhead, launch floors) of each run on the other runs "
                             "(leave one run out) instead of taking the engine profile's")
    parser.add_argument("--eager-floor", default="default",
                        help="least GPU time of a batch launched op by op (one with prefill tokens): "
                             "'default' (the runtime model's, 0.4885 ms per layer), 'measured' (from these "
                             "runs), 'none', or seconds per layer")
    args = parser.parse_args(argv)

    runs = find_runs(args.runs)
    if not runs:
        raise SystemExit(f"no servesim-execute runs (config.json + steps.parquet) under "
                         f"{[str(r) for r in args.runs]}")
    predictors = PredictorCache()
    if args.held_out:
        per_run = held_out_host_terms(runs, predictors)
        setting = ("host terms (CPU overhead, launch floors) fitted for each run on the other runs "
                   "(leave one run out; simulator.compare.fit_host_terms)")
    else:
        host, setting = host_terms(args.cpu_overhead, args.eager_floor, runs, predictors)
        per_run = dict.fromkeys(runs, host)
    print(f"simulating with {setting}")
    comparisons = []
    for run_dir in runs:
        comparisons.append(compare_run(run_dir, predictors, per_run[run_dir]))
        e = comparisons[-1].errors()
        it = comparisons[-1].iteration_errors()["total"]
        print(f"{run_dir.name}: TTFT p50 {e['ttft_s_p50']:+.1f} %, TBT p99 {e['tbt_s_p99']:+.1f} %, "
              f"E2E p50 {e['e2e_s_p50']:+.1f} %, iteration median |err| {it['median_abs_pct']:.1f} %",
              flush=True)
    table = summary_table(comparisons)
    order = {"conversation": 0, "arxiv": 1}
    table = table.assign(_o=table["trace"].map(order).fillna(2)).sort_values(
        ["_o", "trace", "policy", "load"], kind="stable").drop(columns="_o")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "summary.csv", index=False)
        pd.concat([c.iterations.assign(run=c.name) for c in comparisons]).to_parquet(
            args.out / "iterations.parquet", index=False)
        targets = {"cpu_overhead": setting, **targets_summary(table)}
        (args.out / "targets.json").write_text(json.dumps(targets, indent=2) + "\n")
        if (np.asarray([s["gpu_s"].notna().any() for s in (c.iterations for c in comparisons)])).all():
            samples = [host_samples(r, predictors) for r in runs]
            cpu = pooled_cpu_overhead(runs, launch_floor_s(samples, "eager"))
            try:  # what an engine profile of these runs would hold (fitted on all of them)
                cpu["engine_host_terms"] = fit_host_terms(samples)
            except ValueError as e:
                cpu["engine_host_terms"] = f"not fitted: {e}"
            if args.held_out:
                cpu["held_out_host_terms"] = {r.name: terms for r, terms in per_run.items()}
            (args.out / "cpu_overhead.json").write_text(json.dumps(cpu, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        report = markdown_report(table)
        if args.repeats:
            report += "\n" + run_to_run_markdown(run_to_run_rows(comparisons, args.repeats))
        args.markdown.write_text(f"Simulated with {setting}. Generated by `servesim-compare` "
                                 f"(simulator/compare.py).\n\n" + report)
    if args.figures:
        from plots.fidelity import write_fidelity_figures

        for path in write_fidelity_figures(comparisons, args.figures):
            print(f"wrote {path}")
    print(json.dumps(targets_summary(table)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
