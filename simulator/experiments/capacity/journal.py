"""The trial journal (trials.jsonl): each finished trial of a search, one JSON line, so an interrupted
search resumes trial by trial."""
from __future__ import annotations

import json
import os
from pathlib import Path

from simulator.experiments.capacity.records import number_from_json, trial_to_dict
from simulator.experiments.capacity.search import Trial

TRIALS_JOURNAL = "trials.jsonl"


def read_trial_journal(path: Path, fingerprint: str) -> dict[float, Trial]:
    """The trials a journal holds for inputs `fingerprint`, by rate. Lines of other inputs, and a line
    torn by a kill, are ignored: those trials simply run again."""
    trials = {}
    if not Path(path).exists():
        return trials
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("fingerprint") == fingerprint:
            trial = entry["trial"]
            trial["metrics"] = {k: number_from_json(v) for k, v in trial["metrics"].items()}
            trials[trial["rate_qps"]] = Trial(**trial)
    return trials


def append_trial(path: Path, fingerprint: str, trial: Trial) -> None:
    """Add one finished trial to the journal as a JSON line, on disk before returning."""
    line = json.dumps({"fingerprint": fingerprint, "trial": trial_to_dict(trial)}) + "\n"
    path = Path(path)
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        line = "\n" + line  # after a line torn by a kill
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


