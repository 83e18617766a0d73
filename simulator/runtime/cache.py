"""On-disk cache of fitted runtime models: arrays in .npz, metadata in JSON, no pickle.

A cache entry is two files named by its key (a hash of the profile files' bytes, the model and
hardware configs, the TP degree and the fitting code's own hash):
    <key>.npz   the FittedRuntime arrays (loaded with allow_pickle=False)
    <key>.json  scalars, chosen families, CV scores, the sha256 of the .npz bytes, and the sha256 of the
                JSON's own content (every other field, canonically written)
An entry is used only if the JSON parses, hashes to its recorded digest, names the same key and code
version, and the .npz bytes hash to the recorded digest. Anything else (another version, a truncated
file, a number edited by hand) is ignored with a one-line note on stderr, and the model is refitted,
then the entry rewritten atomically. A missing entry is refitted without a note.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from simulator.atomic import write_atomically
from simulator.paths import REPO_ROOT
from simulator.runtime.fitted import FamilyScore, FittedRuntime

CACHE_ENV = "SERVESIM_CACHE_DIR"


def cache_dir() -> Path:
    """$SERVESIM_CACHE_DIR, else <repo>/.cache/runtime (gitignored)."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache" / "runtime")


def cache_key(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def save(fitted: FittedRuntime, key: str, version: str, directory: Path | None = None) -> Path:
    """Write `fitted` under `key`; returns the .npz path."""
    directory = Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"grid_tokens": fitted.grid_tokens, "attention_coef": fitted.attention_coef}
    arrays.update({f"op__{name}": values for name, values in fitted.op_ms.items()})
    if fitted.attention_trees is not None:
        arrays.update({f"trees__{name}": values for name, values in fitted.attention_trees.items()})
    if fitted.decode_attention_coef is not None:
        arrays["decode_attention_coef"] = fitted.decode_attention_coef
    if fitted.decode_attention_trees is not None:
        arrays.update({f"decode_trees__{name}": values for name, values in fitted.decode_attention_trees.items()})
    npz_path = directory / f"{key}.npz"
    _atomic_write(npz_path, lambda f: np.savez_compressed(f, **arrays))
    meta = {
        "key": key, "version": version, "npz_sha256": hashlib.sha256(npz_path.read_bytes()).hexdigest(),
        "model_name": fitted.model_name, "hardware_profile": fitted.hardware_profile, "tp": fitted.tp,
        "attention_family": fitted.attention_family, "decode_attention_family": fitted.decode_attention_family,
        "attention_q_heads": fitted.attention_q_heads,
        "attention_kv_heads": fitted.attention_kv_heads,
        "attention_block_m": fitted.attention_block_m, "num_sms": fitted.num_sms,
        "chosen": fitted.chosen, "fit_seconds": fitted.fit_seconds,
        "calibration_scale": fitted.calibration_scale, "calibration_layer_ms": fitted.calibration_layer_ms,
        "calibration_rows": fitted.calibration_rows, "calibration_source": fitted.calibration_source,
        "scores": {op: {fam: asdict(s) for fam, s in fams.items()} for op, fams in fitted.scores.items()},
    }
    meta["meta_sha256"] = _meta_digest(meta)
    _atomic_write(directory / f"{key}.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return npz_path


def _meta_digest(meta: dict) -> str:
    """sha256 of an entry's JSON fields other than this digest, written canonically (sorted keys, no
    spaces): a float read back from JSON writes out the same, so an untouched file hashes the same."""
    fields = {name: value for name, value in meta.items() if name != "meta_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load(key: str, version: str, directory: Path | None = None) -> FittedRuntime | None:
    """The cached FittedRuntime under `key`, or None if absent, stale or corrupt (never trusted blindly).

    An entry that exists but cannot be used is named on stderr in one line, with the reason."""
    directory = Path(directory or cache_dir())
    npz_path, json_path = directory / f"{key}.npz", directory / f"{key}.json"
    if not json_path.exists():
        return None  # never written (or half written: the JSON is written last)
    try:
        return _read_entry(key, version, npz_path, json_path)
    except _Mismatch as e:
        problem = str(e)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    print(f"servesim: runtime-model cache entry {json_path} not used, {problem}; fitting again", file=sys.stderr)
    return None


class _Mismatch(Exception):
    """A cache entry that reads fine but must not be used; the message says why."""


def _read_entry(key: str, version: str, npz_path: Path, json_path: Path) -> FittedRuntime:
    """The entry's FittedRuntime once both files match their checksums and the entry its key and code
    version; _Mismatch otherwise, and the reader's own exceptions for unreadable files."""
    meta = json.loads(json_path.read_text())
    if _meta_digest(meta) != meta.get("meta_sha256"):
        raise _Mismatch("its JSON does not match the checksum it records (edited, damaged, or written by "
                        "older code)")
    if meta.get("key") != key or meta.get("version") != version:
        raise _Mismatch("written for another key or code version")
    if hashlib.sha256(npz_path.read_bytes()).hexdigest() != meta.get("npz_sha256"):
        raise _Mismatch(f"{npz_path.name} does not match the checksum its JSON records")
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    ops = {name[4:]: arrays[name] for name in arrays if name.startswith("op__")}
    trees = {name[7:]: arrays[name] for name in arrays if name.startswith("trees__")} or None
    decode_trees = {name[14:]: arrays[name] for name in arrays if name.startswith("decode_trees__")} or None
    return FittedRuntime(
        model_name=meta["model_name"], hardware_profile=meta["hardware_profile"], tp=int(meta["tp"]),
        grid_tokens=arrays["grid_tokens"], op_ms=ops, attention_family=meta["attention_family"],
        attention_coef=arrays["attention_coef"], attention_trees=trees,
        attention_q_heads=int(meta["attention_q_heads"]),
        attention_kv_heads=int(meta["attention_kv_heads"]), attention_block_m=int(meta["attention_block_m"]),
        num_sms=int(meta["num_sms"]), decode_attention_family=meta["decode_attention_family"],
        decode_attention_coef=arrays.get("decode_attention_coef"), decode_attention_trees=decode_trees,
        chosen=dict(meta["chosen"]), fit_seconds=float(meta["fit_seconds"]),
        calibration_scale=float(meta["calibration_scale"]),
        calibration_layer_ms=float(meta["calibration_layer_ms"]), calibration_rows=int(meta["calibration_rows"]),
        calibration_source=str(meta["calibration_source"]),
        scores={op: {fam: FamilyScore(**s) for fam, s in fams.items()} for op, fams in meta["scores"].items()},
    )


def _atomic_write(path: Path, write) -> None:
    """`write(binary file)` into `path` atomically (simulator.atomic)."""
    def to_file(temp: Path) -> None:
        with open(temp, "wb") as f:
            write(f)

    write_atomically(path, to_file)
