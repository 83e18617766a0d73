"""A run's result files: the output directory, Parquet tables written in chunks, summary.json and the
Perfetto trace, each written atomically."""
from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulator.atomic import write_atomically, write_text_atomically
from simulator.config import ConfigError
from simulator.metrics.gaps import _request_chunks
from simulator.metrics.records import IterationRecords, RequestRecords
from simulator.metrics.summary import summary_json
from simulator.metrics.tables import iteration_table, request_table, token_times_table
from simulator.perfetto import write_chrome_trace

if TYPE_CHECKING:
    import pandas as pd


# ----------------------------------------------------------------------------- files


RESULT_FILES = ("requests.parquet", "iterations.parquet", "token_times.parquet", "summary.json", "trace.json")


def prepare_output_dir(out_dir: str | Path) -> Path:
    """Ready `out_dir` for one run's result files before the run starts, and return it as a Path.

    Creates it if missing and proves it writable (ConfigError naming the directory otherwise, rather than
    an OSError once the simulation is done), and removes the result files an earlier run left there: a
    run into a used directory replaces that run's results whether it completes or fails, so one
    directory never holds the results of one run beside the config of another.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    except OSError as e:
        raise ConfigError(f"output directory {out}: cannot write result files there "
                          f"({e.strerror or e})") from None
    return out


# The token and iteration tables are written this many rows at a time (about 10 and 45 MB as DataFrames).
WRITE_ROWS_PER_CHUNK = 1 << 19

# zstd instead of Parquet's default snappy: the whole conversation trace's tables shrink from 19.5 to
# 16.2 MB (token times alone 8.1 -> 5.8 MB), read back by pandas/pyarrow as before.
PARQUET_COMPRESSION = "zstd"


def write_outputs(out_dir: str | Path, records: RequestRecords, iters: IterationRecords | None,
                  summary: dict, trace: bool = True, rows_per_chunk: int = WRITE_ROWS_PER_CHUNK) -> dict[str, Path]:
    """Write a run's result files into `out_dir` (created if missing) and return their paths:

    requests.parquet (request_table), iterations.parquet (iteration_table), token_times.parquet
    (token_times_table), summary.json (summary_json), and with `trace` trace.json (Perfetto/Chrome trace;
    open it in ui.perfetto.dev; about 25 MB per 100,000 iterations). Simulations pass their config's
    `trace` (off by default); real-GPU runs (simulator/execute) keep this function's default.
    The token and iteration tables are written about `rows_per_chunk` rows at a time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [name for name in RESULT_FILES if name != "trace.json" or trace]
    paths = {name: out / name for name in names}
    # Each file is written whole or not at all (a kill mid-write leaves the previous one).
    write_atomically(paths["requests.parquet"],
                     lambda temp: request_table(records).to_parquet(temp, index=False,
                                                                     compression=PARQUET_COMPRESSION))
    # The token and iteration tables have a row per output token and per iteration (hundreds of millions
    # for a million requests): they are written a chunk of rows at a time, never built whole.
    offsets = np.asarray(records.token_offsets, dtype=np.int64)
    token_chunks = (token_times_table(records, lo, hi) for lo, hi in _request_chunks(offsets, rows_per_chunk))
    write_atomically(paths["token_times.parquet"],
                     lambda temp: _write_parquet_chunks(temp, token_chunks, token_times_table(records, 0, 0)))
    if iters is None:
        iters = IterationRecords(*(np.empty(0, dtype=np.int64) for _ in fields(IterationRecords)))
    iteration_chunks = (iteration_table(iters, lo, lo + rows_per_chunk)
                        for lo in range(0, len(iters), rows_per_chunk))
    write_atomically(paths["iterations.parquet"],
                     lambda temp: _write_parquet_chunks(temp, iteration_chunks, iteration_table(iters, 0, 0)))
    write_text_atomically(paths["summary.json"], summary_json(summary))
    if trace:
        write_atomically(paths["trace.json"], lambda temp: write_chrome_trace(temp, iters))
    return paths


def _write_parquet_chunks(path: Path, chunks, empty: pd.DataFrame) -> None:
    """One parquet file from DataFrames of the same columns, one after another: what
    pd.concat(chunks).to_parquet(path, index=False) writes (`empty` when there are no chunks), holding
    one chunk at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression=PARQUET_COMPRESSION)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        empty.to_parquet(path, index=False, compression=PARQUET_COMPRESSION)
