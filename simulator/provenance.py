"""What produced a set of results: digests of the simulator's code and of the GPU profiles.

A sweep resumes by skipping the points already in its results file. That is only right while the code
and the profiles are the ones that computed them: after `git pull` or a re-profile, the old points would
silently mix with new ones. Sweeps record this fingerprint when they start and refuse to resume under a
different one (simulator/experiments/sweep/, simulator/experiments/goodput.py).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from simulator.atomic import write_text_atomically
from simulator.config import ConfigError, load_hardware_config
from simulator.paths import PROFILES_DIR, REPO_ROOT

CODE_PACKAGES = ("simulator", "policies")


def _digest(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(_file_digest(path, *_stamp(path)))
    return digest.hexdigest()[:16]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4096)
def _file_digest(path: Path, mtime_ns: int, size: int) -> bytes:
    """A file's sha256, read once per version (a sweep fingerprints every point against the same files)."""
    return hashlib.sha256(path.read_bytes()).digest()


def results_fingerprint(repo_root: Path = REPO_ROOT, profiles_dir: Path = PROFILES_DIR) -> dict[str, str]:
    """{"code": digest of every .py file of the simulator and the policies, "profiles": digest of every
    file under data/profiles} (16 hex digits each; about 0.03 s)."""
    code = [p for package in CODE_PACKAGES for p in (repo_root / package).rglob("*.py")]
    profiles = [p for p in profiles_dir.rglob("*") if p.is_file()] if profiles_dir.exists() else []
    return {"code": _digest(code, repo_root), "profiles": _digest(profiles, profiles_dir)}


def point_fingerprint(simulation, search, repo_root: Path = REPO_ROOT, profiles_dir: Path = PROFILES_DIR) -> str:
    """16 hex digits over what one capacity point's result depends on, and nothing else:
    its resolved configuration (`simulation`, `search`: the typed configs a point composes to), the bytes
    of the trace it reads, the simulator's code with only its own policy's module among the policies
    (another policy's file, added or edited, leaves it alone), and with predictor=fitted the profiles of
    its model on its GPU plus the communication tables (and those of the GPU it transfers kernel times
    from, simulator/runtime/transfer.py). A sweep reruns a finished point whose
    fingerprint changed (simulator/experiments/sweep/)."""
    import dataclasses

    digest = hashlib.sha256()
    config = {"simulation": dataclasses.asdict(simulation), "search": dataclasses.asdict(search)}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    workload = simulation.workload
    if workload.trace and "trace" in (workload.arrival, workload.lengths):
        from simulator.workload import resolve_trace_path

        try:
            trace = resolve_trace_path(workload.trace)
            digest.update(_file_digest(trace, *_stamp(trace)))
        except (ConfigError, OSError):
            digest.update(b"no trace file")  # the point fails when it runs; its fingerprint still differs
    digest.update(_digest(_code_files(simulation.policy.name, repo_root), repo_root).encode())
    if simulation.predictor == "fitted":
        hardware = simulation.hardware
        folders = [profiles_dir / hardware.profile / simulation.model.name, profiles_dir / hardware.comm_profile / "comm"]
        if hardware.transfer_from:  # kernel times transferred from another GPU's tables: those count too
            try:
                source = load_hardware_config(hardware.transfer_from)
                folders += [profiles_dir / source.profile / simulation.model.name,
                            profiles_dir / source.comm_profile / "comm"]
            except ConfigError:
                pass  # the point fails when it runs; its fingerprint still names the field
        files = [p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file()]
        digest.update(_digest(files, profiles_dir).encode())
    return digest.hexdigest()[:16]


def _code_files(policy_name: str, repo_root: Path) -> list[Path]:
    """The simulator's .py files, plus the policies package's modules that policy `policy_name` runs:
    the package's __init__, the modules of its class and base classes, and the policies modules those
    import (read from their import statements). Other policies' modules and unused files are left out."""
    import inspect

    from policies import POLICIES

    policies_dir = repo_root / "policies"
    classes = inspect.getmro(POLICIES[policy_name]) if policy_name in POLICIES else ()
    waiting = [cls.__module__ for cls in classes if cls.__module__.startswith("policies.")]
    files = {policies_dir / "__init__.py"}
    seen = set()
    while waiting:
        module = waiting.pop()
        path = policies_dir / (module.split(".", 1)[1].replace(".", "/") + ".py")
        if module in seen or not path.exists():
            continue
        seen.add(module)
        files.add(path)
        waiting += _policies_imports(path)
    return list((repo_root / "simulator").rglob("*.py")) + [f for f in files if f.exists()]


def _policies_imports(path: Path) -> list[str]:
    """The policies.* modules a Python file imports (`import policies.x`, `from policies.x import y`,
    `from policies import x`, `from . import x`, `from .x import y`)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("policies.")]
        elif isinstance(node, ast.ImportFrom):
            base = "policies" if node.level else (node.module or "")
            if node.level and node.module:
                base = f"policies.{node.module}"
            if base == "policies":
                found += [f"policies.{alias.name}" for alias in node.names]
            elif base.startswith("policies."):
                found.append(base)
    return found


FINGERPRINT_JSON = "fingerprint.json"


class StaleResultsError(ConfigError):
    """A results directory holds results computed by other code or profiles."""


def check_fingerprint(out_dir: Path, fingerprint: dict, finished: int, results_files: tuple[str, ...]) -> None:
    """Record `fingerprint` in out_dir, or refuse when the `finished` results already there (in
    `results_files`) were computed under another one. A directory from before fingerprints is adopted."""
    path = Path(out_dir) / FINGERPRINT_JSON
    if path.exists() and finished:
        recorded = json.loads(path.read_text())
        changed = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
        if changed:
            raise StaleResultsError(
                f"{out_dir}: its {finished} finished points were computed with other "
                f"{' and '.join(changed)} ({path}: {recorded}, now {fingerprint}); resuming would mix the two. "
                f"Write to a new --out directory, or move {' and '.join(results_files)} out of {out_dir} to "
                f"recompute there.")
    write_text_atomically(path, json.dumps(fingerprint, indent=2) + "\n")
