"""Read and check the measured tables the runtime model is fitted on (layout: profiler/schema.py).

Every function here returns plain pandas frames restricted to what one fit needs and raises
`ProfileError` naming the file (and the row or column) when something is missing or malformed.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from profiler.schema import (
    ATTENTION_COLUMNS,
    ATTENTION_CSV,
    COMM_COLUMNS,
    ITERATION_COLUMNS,
    OP_NAMES,
    OPS_COLUMNS,
    OPS_CSV,
    iteration_file_names,
    table_path,
)
from simulator.config import ConfigError, HardwareConfig, ModelConfig
from simulator.paths import DATA_DIR, PROFILES_DIR

if TYPE_CHECKING:  # pandas loads only where a table is read or built (it takes ~0.3 s to import)
    import pandas as pd


class ProfileError(ConfigError):
    """A profile table is missing or malformed; the message names the file and what was expected."""


PROFILE_HOWTO = (
    "create it by running the profiler on that GPU (docs/profiler.md: "
    "`servesim-profile profile --models <model> --gpu <name>`) and committing its tables"
)


@dataclass(frozen=True)
class ProfileFiles:
    """Where one (GPU, model) profile set lives."""

    profile_dir: Path  # data/profiles/<gpu>/<model>/
    comm_dir: Path  # data/profiles/<comm gpu>/comm/

    @property
    def ops_csv(self) -> Path:
        """ops.csv.gz, or ops.csv where a profiler run was killed before it packed the table."""
        return table_path(self.profile_dir, OPS_CSV)

    @property
    def attention_csv(self) -> Path:
        """attention.csv.gz, or attention.csv (as ops_csv)."""
        return table_path(self.profile_dir, ATTENTION_CSV)

    @property
    def meta_json(self) -> Path:
        return self.profile_dir / "meta.json"

    @property
    def comm_csv(self) -> Path:
        return self.comm_dir / "comm.csv"


def profile_files(model: ModelConfig, hardware: HardwareConfig, profiles_dir: Path = PROFILES_DIR) -> ProfileFiles:
    """Locate the profile set of `model` on `hardware`; raise ProfileError if its directory is missing."""
    gpu_dir = Path(profiles_dir) / hardware.profile
    if not gpu_dir.is_dir():
        raise ProfileError(
            f"hardware '{hardware.name}' has no measured profiles: directory {gpu_dir} does not exist; "
            f"{PROFILE_HOWTO}"
        )
    model_dir = gpu_dir / model.name
    if not model_dir.is_dir():
        known = sorted(p.name for p in gpu_dir.iterdir() if p.is_dir() and p.name != "comm")
        raise ProfileError(
            f"model '{model.name}' was not profiled on '{hardware.profile}': directory {model_dir} does not "
            f"exist (profiled models there: {', '.join(known) or 'none'}); {PROFILE_HOWTO}"
        )
    return ProfileFiles(profile_dir=model_dir, comm_dir=Path(profiles_dir) / hardware.comm_profile / "comm")


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        raise ProfileError(f"missing profile table {path}; {PROFILE_HOWTO}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot be read as CSV ({e})") from None
    except (OSError, EOFError, zlib.error) as e:  # a damaged .gz
        raise ProfileError(f"{path}: cannot be read ({e})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ProfileError(f"{path}: missing column(s) {missing}; expected the layout in profiler/schema.py")
    bad = ~np.isfinite(pd.to_numeric(frame["time_ms"], errors="coerce")) | (
        pd.to_numeric(frame["time_ms"], errors="coerce") <= 0
    )
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +1 header, +1 one-based
        raise ProfileError(f"{path}, line {line}: time_ms must be a positive number, got {frame['time_ms'].iloc[line - 2]!r}")
    return frame


def read_ops(path: Path, tp: int) -> pd.DataFrame:
    """Rows of ops.csv for tensor-parallel degree `tp`; every op of OP_NAMES must be there."""
    frame = _read_csv(path, OPS_COLUMNS)
    unknown = sorted(set(frame["op"]) - set(OP_NAMES))
    if unknown:
        raise ProfileError(f"{path}: unknown op(s) {unknown}; expected names from profiler/schema.py OP_NAMES")
    rows = frame[frame["tp"] == tp]
    if rows.empty:
        raise ProfileError(
            f"{path}: no rows for tp={tp} (profiled tp: {sorted(frame['tp'].unique().tolist())}); "
            f"profile this tensor-parallel degree first"
        )
    missing = [op for op in OP_NAMES if op not in set(rows["op"])]
    if missing:
        raise ProfileError(f"{path}: tp={tp} has no rows for op(s) {missing}")
    return rows.reset_index(drop=True)


def read_attention(path: Path, tp: int) -> pd.DataFrame:
    """Rows of attention.csv for `tp`, with `composition` parsed into a list of [q, kv] pairs."""
    frame = _read_csv(path, ATTENTION_COLUMNS)
    rows = frame[frame["tp"] == tp].reset_index(drop=True)
    if rows.empty:
        raise ProfileError(
            f"{path}: no rows for tp={tp} (profiled tp: {sorted(frame['tp'].unique().tolist())})"
        )
    rows["composition"] = [_parse_composition(path, i, text) for i, text in enumerate(rows["composition"])]
    return rows


def _parse_composition(path: Path, index: int, text: str) -> np.ndarray:
    try:
        pairs = np.asarray(json.loads(text), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ProfileError(f"{path}: row {index}: composition {text!r} is not a JSON list of [q, kv] ({e})") from None
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or (pairs[:, 0] < 1).any() or (pairs[:, 1] < 0).any():
        raise ProfileError(
            f"{path}: row {index}: composition {text!r} must be a non-empty list of [q_tokens >= 1, kv_tokens >= 0]"
        )
    return pairs


def read_comm(path: Path) -> pd.DataFrame:
    """All rows of comm.csv (all_reduce and send_recv for every world size measured)."""
    if not path.exists():
        raise ProfileError(
            f"tensor or pipeline parallelism needs the NCCL tables {path}, which do not exist yet; run the "
            f"profiler's comm mode on a multi-GPU machine (docs/profiler.md) or use tp=1 pp=1"
        )
    return _read_csv(path, COMM_COLUMNS)


def read_meta(path: Path) -> dict:
    """meta.json of a profile set ({} if absent: it only documents the measurement)."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: not valid JSON ({e})") from None


def validation_csv(model: ModelConfig, hardware: HardwareConfig, data_dir: Path = DATA_DIR,
                   attention_launch: str = "fused_varlen") -> Path:
    """data/validation/<gpu>/<model>/iterations.csv, or iterations_<launch>.csv (may not exist)."""
    name = iteration_file_names(attention_launch)[0]
    return Path(data_dir) / "validation" / hardware.profile / model.name / name


def validation_csvs(hardware: HardwareConfig, data_dir: Path = DATA_DIR,
                    attention_launch: str = "fused_varlen") -> list[Path]:
    """Every whole-iteration table of `hardware`'s GPU for one attention launch mode, sorted by model."""
    name = iteration_file_names(attention_launch)[0]
    return sorted((Path(data_dir) / "validation" / hardware.profile).glob(f"*/{name}"))


def read_iterations(path: Path) -> pd.DataFrame:
    """Whole-iteration measurements with compositions parsed."""
    frame = _read_csv(path, ITERATION_COLUMNS)
    frame["composition"] = [_parse_composition(path, i, text) for i, text in enumerate(frame["composition"])]
    return frame


def file_digest(paths: list[Path]) -> str:
    """sha256 over the names and bytes of `paths` (missing files count as empty with a marker)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(Path(path).name).encode())
        if Path(path).exists():
            digest.update(Path(path).read_bytes())
        else:
            digest.update(b"<missing>")
    return digest.hexdigest()
