"""What produced a set of results: digests of the simulator's code and of the GPU profiles.

A sweep resumes by skipping the points already in its results file. That is only right while the code
and the profiles are the ones that computed them: after `git pull` or a re-profile, the old points would
silently mix with new ones. Sweeps record this fingerprint when they start and refuse to resume under a
different one (simulator/sweep.py, simulator/disagg/goodput.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from simulator.atomic import write_text_atomically
from simulator.config import ConfigError
from simulator.paths import PROFILES_DIR, REPO_ROOT

CODE_PACKAGES = ("simulator", "policies")


def _digest(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def results_fingerprint(repo_root: Path = REPO_ROOT, profiles_dir: Path = PROFILES_DIR) -> dict[str, str]:
    """{"code": digest of every .py file of the simulator and the policies, "profiles": digest of every
    file under data/profiles} (16 hex digits each; about 0.03 s)."""
    code = [p for package in CODE_PACKAGES for p in (repo_root / package).rglob("*.py")]
    profiles = [p for p in profiles_dir.rglob("*") if p.is_file()] if profiles_dir.exists() else []
    return {"code": _digest(code, repo_root), "profiles": _digest(profiles, profiles_dir)}


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
