"""A sweep's results store: results.jsonl (one JSON line per finished point, appended as points finish)
and the tables rebuilt from it: results.parquet / results.csv (one row per point) and trials.parquet (one
row per capacity-search trial)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from simulator.atomic import write_atomically

RESULTS_JSONL = "results.jsonl"
DONE_STATUSES = ("ok", "infeasible_config")
# Columns naming a configuration, copied onto each trial row so trials can be grouped by configuration.
CONFIG_FIELDS = ("model", "hardware", "policy", "chunk_size", "max_batch_size", "tp", "pp", "num_replicas",
                 "workload", "slo_name")
TEXT_COLUMNS = {"point_id", "overrides", "status", "error", "traceback", "violations", "capacity_status"}

def read_records(out_dir: Path) -> dict[str, dict]:
    """Finished records by point id (the last line for a point wins; a torn last line is ignored)."""
    path = Path(out_dir) / RESULTS_JSONL
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the sweep was killed mid-write; that point simply runs again
            records[record["point_id"]] = record
    return records


def append_record(out_dir: Path, record: dict) -> None:
    """Append one point's record as a single JSON line, flushed to disk before returning."""
    path = Path(out_dir) / RESULTS_JSONL
    line = json.dumps(record, default=str) + "\n"
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn line from a killed run: start ours on a fresh line
                line = "\n" + line
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_tables(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild results.parquet / results.csv (one row per point) and trials.parquet (one row per
    trial) from results.jsonl; return both tables."""
    out_dir = Path(out_dir)
    records = list(read_records(out_dir).values())
    rows, trial_rows = [], []
    for record in records:
        row = {k: v for k, v in record.items() if k not in ("trials", "axes", "overrides", "metrics")}
        row["overrides"] = " ".join(record.get("overrides", []))
        row.update(record.get("axes", {}))
        row.update(record.get("metrics", {}))
        rows.append(row)
        config = {k: v for k, v in row.items() if k in CONFIG_FIELDS}
        for trial in record.get("trials", []):
            flat = {k: v for k, v in trial.items() if k not in ("metrics", "violations")}
            flat["violations"] = "; ".join(trial.get("violations", []))
            flat.update({k: _as_float(v) for k, v in trial.get("metrics", {}).items()})
            trial_rows.append({"point_id": record["point_id"], **config, **record.get("axes", {}), **flat})
    table = pd.DataFrame(rows)
    trials = pd.DataFrame(trial_rows)
    if len(table):
        table = _numeric_columns(table)
        write_atomically(out_dir / "results.parquet", lambda temp: table.to_parquet(temp, index=False))
        write_atomically(out_dir / "results.csv", lambda temp: table.to_csv(temp, index=False))
    if len(trials):
        trials = _numeric_columns(trials)
        write_atomically(out_dir / "trials.parquet", lambda temp: trials.to_parquet(temp, index=False))
    return table, trials


def _as_float(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def _numeric_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Turn columns whose every value parses as a number into numbers (axis values arrive as strings)."""
    for column in table.columns:
        if column in TEXT_COLUMNS:
            continue
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            converted = pd.to_numeric(table[column].map(_as_float), errors="coerce")
            if converted.notna().sum() == table[column].notna().sum():
                table[column] = converted
    return table


