"""Communication times from the measured NCCL tables (data/profiles/<gpu>/comm/comm.csv).

A collective's time is a smooth function of its message size, so it is interpolated piecewise-linearly
in log(bytes)-log(time) between measured sizes. Below the smallest size the time stays at the smallest
measurement (latency-bound); above the largest it grows in proportion to bytes (bandwidth-bound).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.runtime.tables import ProfileError


@dataclass(frozen=True)
class CommCurve:
    """Measured time of one collective at one world size as a function of message bytes."""

    log_bytes: np.ndarray
    log_ms: np.ndarray

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> "CommCurve":
        grouped = rows.groupby("bytes")["time_ms"].median().sort_index()
        return cls(np.log(grouped.index.to_numpy(dtype=np.float64)), np.log(grouped.to_numpy(dtype=np.float64)))

    def ms(self, message_bytes: np.ndarray) -> np.ndarray:
        """Milliseconds to move `message_bytes` (per GPU) through this collective."""
        b = np.log(np.maximum(np.asarray(message_bytes, dtype=np.float64), 1.0))
        inside = np.exp(np.interp(b, self.log_bytes, self.log_ms))
        beyond = np.exp(self.log_ms[-1] + (b - self.log_bytes[-1]))  # linear in bytes past the table
        return np.where(b > self.log_bytes[-1], beyond, inside)


def comm_curve(frame: pd.DataFrame, path: Path, op: str, world_size: int) -> CommCurve:
    """The curve of `op` at `world_size`; ProfileError naming `path` if it was not measured."""
    rows = frame[(frame["op"] == op) & (frame["world_size"] == world_size)]
    if len(rows["bytes"].unique()) < 2:
        measured = sorted(frame.loc[frame["op"] == op, "world_size"].unique().tolist())
        raise ProfileError(
            f"{path}: no {op} measurements at world_size={world_size} (measured world sizes: {measured or 'none'}); "
            f"profile them on a machine with {world_size} GPUs"
        )
    return CommCurve.from_rows(rows)
