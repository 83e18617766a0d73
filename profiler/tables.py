"""Append-only CSV tables that survive interruption: rows are flushed as they are measured, and a rerun
skips every key already present. A row cut off mid-write (the process was killed) is dropped on open.

A compressed table rests as <name>.gz between runs: opening it unpacks it to the plain file, rows are
appended there, and `close` packs it again. A run killed before `close` leaves the plain file, which the
next run resumes from (and readers read: profiler.schema.table_path)."""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Self


class TableError(ValueError):
    """A table on disk does not have the expected layout; the message names the file."""


class ResumableCsv:
    """A CSV with fixed `columns`, keyed by key_of(row) (a tuple built from the row's text values).

    `path` is the plain file. compressed: the table rests as `path`.gz; it is resumed from there (or from
    `path`, left by a run that was killed) and packed there again by `close`."""

    def __init__(self, path: Path, columns: list[str], key_of: Callable[[dict], tuple],
                 compressed: bool = False):
        self.path, self.columns, self.key_of = Path(path), list(columns), key_of
        self.compressed = compressed
        self.keys: set[tuple] = set()
        self.rows: dict[tuple, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if compressed:
            unpack(self.path)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            with self.path.open("w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(self.columns)

    def _load(self) -> None:
        text = self.path.read_text()
        if not text.endswith("\n"):
            # The last row was being written when the run stopped: drop it, it will be measured again.
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text)
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames != self.columns:
            raise TableError(f"{self.path}: columns {reader.fieldnames} differ from the expected {self.columns}; "
                             "move the file away or profile into another --out")
        for line, row in enumerate(reader, start=2):
            if None in row.values() or None in row:
                raise TableError(f"{self.path}:{line}: row has the wrong number of fields")
            key = self.key_of(row)
            if key not in self.keys:
                self.keys.add(key)
                self.rows[key] = row

    def __contains__(self, key: tuple) -> bool:
        return key in self.keys

    def append(self, row: dict) -> None:
        """Write one row (values formatted by `format_value`) and flush it to disk."""
        text_row = {c: format_value(row[c]) for c in self.columns}
        key = self.key_of(text_row)
        if key in self.keys:
            return
        with self.path.open("a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow([text_row[c] for c in self.columns])
            f.flush()  # a killed run keeps every row written so far
        self.keys.add(key)
        self.rows[key] = text_row

    def find(self, key: tuple) -> dict | None:
        return self.rows.get(key)

    def close(self) -> None:
        """End of a run: a compressed table is packed into `path`.gz and the plain file removed."""
        if self.compressed and self.path.exists():
            pack(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gz_path(path: Path) -> Path:
    """Where the table `path` rests compressed: `path` with .gz appended."""
    return Path(path).with_name(Path(path).name + ".gz")


def pack(path: Path) -> Path:
    """Replace the table `path` by `path`.gz; returns the .gz path. The bytes depend only on the table's
    (no name or time in the gzip header), so packing unchanged rows leaves a committed file unchanged."""
    path, target = Path(path), gz_path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    temporary.replace(target)  # never half a .gz: a run killed here still has the plain file
    path.unlink()
    return target


def unpack(path: Path) -> None:
    """Make the plain table `path` the one to append to, from `path`.gz if that exists. When both exist
    (a run was killed between writing one and removing the other, or the .gz was restored beside a killed
    run's plain file), the plain file is kept if it holds every row of the .gz, else TableError."""
    path, source = Path(path), gz_path(path)
    if not source.exists():
        return
    try:
        text = gzip.decompress(source.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise TableError(f"{source}: not a readable gzip file ({e})") from None
    if path.exists():
        if not path.read_bytes().startswith(text):
            raise TableError(f"{path} and {source} both exist and {path.name} does not continue the rows of "
                             f"{source.name}: move away the one not to resume from")
    else:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(text)
        temporary.replace(path)
    source.unlink()


def format_value(value) -> str:
    """Text of one cell: floats with 6 significant digits, everything else as str."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


def ops_key(row: dict) -> tuple:
    return (int(row["tp"]), str(row["op"]), int(row["num_tokens"]))


def attention_key(row: dict) -> tuple:
    # Compositions are stored canonically (grid.composition_json), so the text is the key.
    return (int(row["tp"]), json.dumps(json.loads(row["composition"])))


def iteration_key(row: dict) -> tuple:
    return (str(row["model"]), int(row["tp"]), json.dumps(json.loads(row["composition"])))


def comm_key(row: dict) -> tuple:
    return (str(row["op"]), int(row["world_size"]), str(row["dtype"]), int(row["bytes"]))


def write_json(path: Path, value: dict) -> None:
    """Write JSON atomically (a killed run never leaves half a meta.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not valid JSON ({e})") from None
