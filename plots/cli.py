"""Rebuild every figure from result files: `servesim-plots <results dir(s)> [--out DIR]`.

It walks the given directories and recognises three kinds of results:
  run dirs       (requests.parquet, token_times.parquet, iterations.parquet from `servesim`):
                 latency CDFs of all runs together, a batch/KV timeline per run, pipeline bubbles for
                 runs with more than one stage
  capacity dirs  (capacity.json from `servesim-capacity`, e.g. a Hydra multirun tree) and
  sweep dirs     (results.parquet + trials.parquet from `servesim-sweep`):
                 capacity vs chunk size, best capacity per policy, TTFT-TBT trade-off, Pareto frontier
Figures are written as PNG into --out (default: the first directory's figures/).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from plots.capacity import capacity_bar_figure, capacity_vs_chunk_figure
from plots.common import policy_label, save_figure
from plots.latency_cdf import LatencySample, latency_cdf_figure
from plots.pareto import pareto_figure
from plots.pipeline import bubble_fractions, pipeline_bubble_figure
from plots.timeline import batch_kv_timeline_figure
from plots.tradeoff import common_rate, tradeoff_figure, tradeoff_points

CONFIG_KEYS = ["model", "hardware", "policy", "chunk_size", "max_batch_size", "tp", "pp", "num_replicas",
               "workload"]
# What a run's legend label may name, in this order, when runs differ in it (the policy always shows).
RUN_LABEL_KEYS = ["chunk_size", "max_batch_size", "engine", "model", "hardware", "tp", "pp", "num_replicas",
                  "router", "workload", "seed"]


# --- finding and reading results -----------------------------------------------------------------


def find_results(roots: list[Path]) -> dict[str, list[Path]]:
    """Directories of each kind under `roots`: {'runs': [...], 'capacity': [...], 'sweeps': [...]}.
    Capacity files inside a sweep's points/ folder belong to the sweep and are not listed again."""
    found = {"runs": set(), "capacity": set(), "sweeps": set()}
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"results directory {root} does not exist")
        for path in root.rglob("results.parquet"):
            found["sweeps"].add(path.parent)
        for path in root.rglob("capacity.json"):
            found["capacity"].add(path.parent)
        for path in root.rglob("requests.parquet"):
            found["runs"].add(path.parent)
    in_sweep = lambda d: any(s in d.parents for s in found["sweeps"])
    found["capacity"] = {d for d in found["capacity"] if not in_sweep(d)}
    return {kind: sorted(dirs) for kind, dirs in found.items()}


def run_config(run_dir: Path) -> dict:
    """The flat configuration of a run dir (policy, chunk size, ...): from the `setup` block the
    simulator writes into summary.json, else from a config file there (config.yaml, config.json or
    Hydra's .hydra/config.yaml)."""
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        setup = json.loads(summary_path.read_text()).get("setup")
        if setup:
            params = setup.get("policy_params") or {}
            return {"model": setup.get("model"), "hardware": setup.get("hardware"), "policy": setup.get("policy"),
                    "chunk_size": params.get("chunk_size"),
                    "max_batch_size": params.get("max_batch_size", params.get("max_num_seqs")),
                    "tp": setup.get("tp"), "pp": setup.get("pp"), "num_replicas": setup.get("num_replicas"),
                    "workload": setup.get("workload"), "engine": setup.get("engine"),
                    "router": setup.get("router"), "seed": setup.get("seed"),
                    # A prefill/decode-pool run records its pools' policies as "disagg(vllm/sarathi)".
                    "disaggregated": bool(setup.get("disagg"))}
    for name in ("config.json", "config.yaml", ".hydra/config.yaml"):
        path = run_dir / name
        if path.exists():
            cfg = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
            return flatten_config(cfg or {})
    return {}


def flatten_config(cfg: dict) -> dict:
    """The few fields that name a configuration, from a nested simulator config."""
    def name_of(group):
        value = cfg.get(group)
        return value.get("name") if isinstance(value, dict) else value

    policy = cfg.get("policy") if isinstance(cfg.get("policy"), dict) else {}
    cluster = cfg.get("cluster") or {}
    return {"model": name_of("model"), "hardware": name_of("hardware"), "policy": name_of("policy"),
            "chunk_size": policy.get("chunk_size"), "max_batch_size": policy.get("max_batch_size"),
            "tp": cluster.get("tp"), "pp": cluster.get("pp"), "num_replicas": cluster.get("num_replicas"),
            "workload": name_of("workload"), "engine": name_of("engine"), "router": cluster.get("router"),
            "seed": cfg.get("seed"), "disaggregated": bool(cluster.get("disagg"))}


def run_label(config: dict, run_dir: Path) -> str:
    """'Sarathi-Serve c512 tp2pp1 llama-3-8b' style title of one run, or the directory name when the
    config is unknown. `tp`/`pp` may be numbers or a prefill/decode pair such as "1/2"."""
    if not config.get("policy"):
        return run_dir.name
    label = policy_label(config["policy"])
    if config.get("chunk_size"):
        label += f" c{config['chunk_size']}"
    if _above_one(config.get("tp")) or _above_one(config.get("pp")):
        label += f" tp{config.get('tp') or 1}pp{config.get('pp') or 1}"
    if config.get("model"):
        label += f" {config['model']}"
    return label


def _above_one(degree) -> bool:
    """Whether a parallel degree (3, "3", or a pool pair "1/2") has a part above 1."""
    parts = str(degree if degree is not None else 1).split("/")
    return any(part.strip().isdigit() and int(part) > 1 for part in parts)


def run_labels(configs: list[dict], run_dirs: list[Path]) -> list[str]:
    """One short legend label per run that tells it from the others: the policy, then each field
    (RUN_LABEL_KEYS) where this run is unusual. A field whose value several runs share is named only on
    the runs that differ from it ("Sarathi-Serve vllm_v0" among vllm_v1 runs); a field every run sets
    differently is named on all ("chunk 256", "chunk 2048"). The router shows only for runs with several
    replicas. Runs that would still read the same get their directory's name; a run of unknown config is
    named by its directory."""
    known = [_comparable(c) for c in configs if c.get("policy")]
    labels = []
    for config, run_dir in zip(configs, run_dirs):
        if not config.get("policy"):
            labels.append(run_dir.name)
            continue
        config = _comparable(config)
        fields = [_field_text(key, config[key]) for key in RUN_LABEL_KEYS
                  if config.get(key) is not None and _unusual(key, config, known)]
        labels.append(" ".join([policy_label(config["policy"]), *fields]))
    return [f"{label} ({run_dir.name})" if labels.count(label) > 1 and label != run_dir.name else label
            for label, run_dir in zip(labels, run_dirs)]


def _comparable(config: dict) -> dict:
    """The config with a pool pair of equal degrees ("1/1") read as that degree, and no router for a
    single replica (it routes nothing)."""
    config = dict(config)
    for key in ("tp", "pp"):
        parts = str(config.get(key)).split("/")
        if len(parts) > 1 and len(set(parts)) == 1 and parts[0].isdigit():
            config[key] = int(parts[0])
    if (config.get("num_replicas") or 1) == 1 and not config.get("disaggregated"):
        config["router"] = None
    return config


def _unusual(key: str, config: dict, configs: list[dict]) -> bool:
    """Whether `config[key]` sets this run apart: it differs from the value most runs share, or, when no
    value is shared by two runs, the runs differ in it at all."""
    values = [str(c.get(key)) for c in configs]
    if len(set(values)) <= 1:
        return False
    usual = max(set(values), key=values.count)
    return values.count(usual) < 2 or str(config.get(key)) != usual


def _field_text(key: str, value) -> str:
    """How one configuration field reads in a label ("chunk 512", "tp2", "4 replicas", "seed 1")."""
    formats = {"chunk_size": "chunk {}", "max_batch_size": "batch {}", "tp": "tp{}", "pp": "pp{}",
               "num_replicas": "{} replicas", "seed": "seed {}"}
    return formats.get(key, "{}").format(value)


def tbt_gaps_from_token_times(token_times: pd.DataFrame, rejected_ids: np.ndarray | None = None) -> np.ndarray:
    """Every inter-token gap (s) of every request, from a token_times table
    (request_id, token_index, time_s)."""
    ordered = token_times.sort_values(["request_id", "token_index"], kind="stable")
    if rejected_ids is not None and len(rejected_ids):
        ordered = ordered[~ordered["request_id"].isin(rejected_ids)]
    ids = ordered["request_id"].to_numpy()
    times = ordered["time_s"].to_numpy(dtype=float)
    same_request = ids[1:] == ids[:-1]
    return np.diff(times)[same_request]


@dataclass
class RunData:
    """What the figures read from one run directory."""

    run_dir: Path
    config: dict
    served: pd.DataFrame  # requests.parquet without rejected requests
    tbt_gaps_s: np.ndarray
    iterations: pd.DataFrame | None


def load_run(run_dir: Path) -> RunData:
    """Read one run directory; raises whatever its files' readers raise when something is missing or
    malformed (run_figures skips such runs)."""
    config = run_config(run_dir)
    requests = pd.read_parquet(run_dir / "requests.parquet")
    served = requests[~requests["rejected"]] if "rejected" in requests else requests
    gaps = np.empty(0)
    if (run_dir / "token_times.parquet").exists():
        rejected_ids = requests.loc[requests["rejected"], "request_id"].to_numpy() if "rejected" in requests else None
        gaps = tbt_gaps_from_token_times(pd.read_parquet(run_dir / "token_times.parquet"), rejected_ids)
    iterations_path = run_dir / "iterations.parquet"
    iterations = pd.read_parquet(iterations_path) if iterations_path.exists() else None
    return RunData(run_dir, config, served, gaps, iterations)


def skip_warning(directory: Path, error: Exception) -> None:
    """One line on stderr saying which result directory was left out and why."""
    print(f"servesim-plots: skipped {directory} ({type(error).__name__}: {error})", file=sys.stderr)


def capacity_rows(capacity_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per capacity.json, one row per trial), in the same shape as a sweep's tables."""
    from simulator.experiments.capacity import record_row, trial_rows

    rows, trials = [], []
    for directory in capacity_dirs:
        try:
            record = json.loads((directory / "capacity.json").read_text())
            row, record_trials = record_row(record), trial_rows(record)
        except Exception as e:  # noqa: BLE001 - e.g. a search still writing its file: draw the others
            skip_warning(directory, e)
            continue
        rows.append(row | {"point_id": str(directory)})
        trials += [t | {"point_id": str(directory)} for t in record_trials]
    return pd.DataFrame(rows), pd.DataFrame(trials)


def sweep_tables(sweep_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenated results and trials tables of sweep directories (unreadable ones skipped)."""
    tables, trials = [], []
    for directory in sweep_dirs:
        try:
            table = pd.read_parquet(directory / "results.parquet")
            trial_path = directory / "trials.parquet"
            trial_table = pd.read_parquet(trial_path) if trial_path.exists() else None
        except Exception as e:  # noqa: BLE001 - one unreadable sweep must not cost the others their figures
            skip_warning(directory, e)
            continue
        tables.append(table)
        trials += [trial_table] if trial_table is not None else []
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(),
            pd.concat(trials, ignore_index=True) if trials else pd.DataFrame())


# --- drawing -------------------------------------------------------------------------------------


def run_figures(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Latency CDFs over all runs; a timeline per run; pipeline bubbles for pipelined runs. A run
    directory that cannot be read or drawn is skipped with a warning; the others still get drawn."""
    runs = []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except Exception as e:  # noqa: BLE001 - one unusual run must not cost the others their figures
            skip_warning(run_dir, e)
    labels = run_labels([run.config for run in runs], [run.run_dir for run in runs])
    written, samples, bubbles = [], [], {}
    for run, label in zip(runs, labels):
        color_key = "disaggregated" if run.config.get("disaggregated") else (run.config.get("policy") or label)
        samples.append(LatencySample(label, color_key, run.served["ttft_s"].to_numpy(), run.tbt_gaps_s,
                                     run.served["e2e_s"].to_numpy()))
        if run.iterations is None or not len(run.iterations):
            continue
        try:
            fig = batch_kv_timeline_figure(run.iterations, _kv_blocks_total(run.run_dir),
                                           title=run_label(run.config, run.run_dir))
            written.append(save_figure(fig, out_dir / f"timeline_{_slug(run.run_dir, run_dirs)}.png"))
            if run.iterations["stage"].max() > 0:
                bubbles[label] = bubble_fractions(run.iterations)
        except Exception as e:  # noqa: BLE001 - its own figures are lost, not the others'
            skip_warning(run.run_dir, e)
    if samples:
        written.append(save_figure(latency_cdf_figure(samples), out_dir / "latency_cdf.png"))
    if bubbles:
        written.append(save_figure(pipeline_bubble_figure(bubbles), out_dir / "pipeline_bubbles.png"))
    return written


def _kv_blocks_total(run_dir: Path) -> int | None:
    """KV blocks of one scheduling engine (what iterations' kv_blocks_used counts against)."""
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        blocks = (json.loads(summary_path.read_text()).get("setup") or {}).get("kv_blocks_per_engine")
        if blocks:
            return int(blocks)
    return None


def _slug(run_dir: Path, all_dirs: list[Path]) -> str:
    """A file-name-safe name for a run dir, unique among `all_dirs`."""
    names = [d.name for d in all_dirs]
    name = run_dir.name if names.count(run_dir.name) == 1 else "_".join(run_dir.parts[-2:])
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def capacity_figures(table: pd.DataFrame, trials: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Figures of a capacity table (sweep or collected capacity.json files)."""
    written = []
    ok = table[table["status"] == "ok"] if "status" in table else table
    if ok.empty or "capacity_qps" not in ok:
        return written
    ok = ok.assign(slo=ok.get("slo_name", "SLOs"))
    if "chunk_size" in ok and ok["chunk_size"].notna().any():
        written.append(save_figure(capacity_vs_chunk_figure(ok), out_dir / "capacity_vs_chunk.png"))
    written.append(save_figure(capacity_bar_figure(ok), out_dir / "capacity_by_policy.png"))
    if "qps_per_gpu" in ok and "ttft_s_p99" in ok and ok["capacity_qps"].gt(0).any():
        with_capacity = ok[ok["capacity_qps"] > 0]
        from simulator.report import with_labels

        written.append(save_figure(pareto_figure(with_labels(with_capacity)), out_dir / "pareto.png"))
    if not trials.empty and {"ttft_s_p99", "tbt_s_p99"} <= set(trials.columns):
        config_columns = [c for c in CONFIG_KEYS if c in trials]
        rate = common_rate(trials, config_columns)
        points = tradeoff_points(trials, rate, config_columns)
        if len(points) > 1:
            written.append(save_figure(tradeoff_figure(points, rate), out_dir / "ttft_tbt_tradeoff.png"))
    return written


def plot_all(roots: list[Path], out_dir: Path) -> list[Path]:
    """Every figure the results under `roots` support; returns the written paths."""
    found = find_results(roots)
    written = run_figures(found["runs"], out_dir)
    combined = capacity_tables(found)
    if combined is not None:
        written += capacity_figures(*combined, out_dir)
    return written


def capacity_tables(found: dict) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(results, trials) of every sweep and capacity search in `found` (find_results), one row per point or
    search (a search counts as a point with status ok); None when there are none."""
    tables, trials = [], []
    if found["sweeps"]:
        table, trial_table = sweep_tables(found["sweeps"])
        tables.append(table)
        trials.append(trial_table)
    if found["capacity"]:
        table, trial_table = capacity_rows(found["capacity"])
        tables.append(table.assign(status="ok", error=""))
        trials.append(trial_table)
    if not tables:
        return None
    return pd.concat(tables, ignore_index=True), pd.concat(trials, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servesim-plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="run, capacity or sweep result directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write PNGs (default: <first>/figures)")
    args = parser.parse_args(argv)
    out_dir = args.out or args.results[0] / "figures"
    try:
        written = plot_all(args.results, out_dir)
    except FileNotFoundError as e:
        print(f"servesim-plots: {e}", file=sys.stderr)
        return 2
    if not written:
        print("servesim-plots: no results found (expected requests.parquet, capacity.json or results.parquet)",
              file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
