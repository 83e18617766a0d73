"""Communication times from the measured NCCL tables (data/profiles/<gpu>/comm/comm.csv).

A collective's time is a smooth function of its message size, so it is interpolated piecewise-linearly
in log(bytes)-log(time) between measured sizes. Below the smallest size the time stays at the smallest
measurement (latency-bound); above the largest it grows in proportion to bytes (bandwidth-bound).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulator.runtime.tables import ProfileError

if TYPE_CHECKING:  # pandas loads only where a table is read or built (it takes ~0.3 s to import)
    import pandas as pd


@dataclass(frozen=True)
class CommCurve:
    """Measured time of one collective at one world size as a function of message bytes."""

    log_bytes: np.ndarray
    log_ms: np.ndarray

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> CommCurve:
        grouped = rows.groupby("bytes")["time_ms"].median().sort_index()
        return cls(np.log(grouped.index.to_numpy(dtype=np.float64)), np.log(grouped.to_numpy(dtype=np.float64)))

    def ms(self, message_bytes: np.ndarray) -> np.ndarray:
        """Milliseconds to move `message_bytes` (per GPU) through this collective."""
        b = np.log(np.maximum(np.asarray(message_bytes, dtype=np.float64), 1.0))
        inside = np.exp(np.interp(b, self.log_bytes, self.log_ms))
        beyond = np.exp(self.log_ms[-1] + (b - self.log_bytes[-1]))  # linear in bytes past the table
        return np.where(b > self.log_bytes[-1], beyond, inside)


def comm_curve(frame: pd.DataFrame, path: Path, op: str, world_size: int) -> CommCurve:
    """The curve of `op` at `world_size`; ProfileError naming `path` if it was not measured.

    An all-reduce over more GPUs than were measured is extrapolated (`ring_all_reduce_curve`) with a
    warning, so TP 4/8 predictions exist before their NCCL tables do.
    """
    rows = frame[(frame["op"] == op) & (frame["world_size"] == world_size)]
    if len(rows["bytes"].unique()) >= 2:
        return CommCurve.from_rows(rows)
    measured = sorted(frame.loc[frame["op"] == op, "world_size"].unique().tolist())
    if op == "all_reduce" and measured and world_size > max(measured):
        largest = max(measured)
        warnings.warn(
            f"{path}: no all_reduce measured at world_size={world_size}; extrapolating from world_size={largest} "
            f"with the ring all-reduce cost model (profile it on a {world_size}-GPU machine: servesim-profile comm)",
            stacklevel=2,
        )
        measured_rows = frame[(frame["op"] == op) & (frame["world_size"] == largest)]
        return ring_all_reduce_curve(CommCurve.from_rows(measured_rows), largest, world_size)
    raise ProfileError(
        f"{path}: no {op} measurements at world_size={world_size} (measured world sizes: {measured or 'none'}); "
        f"profile them on a machine with {world_size} GPUs"
    )


def ring_all_reduce_curve(measured: CommCurve, measured_world_size: int, world_size: int) -> CommCurve:
    """All-reduce time over `world_size` GPUs from a curve measured over fewer, by the ring cost model.

    A ring all-reduce of B bytes moves 2(n-1)/n * B bytes through each GPU's link, so at n GPUs a message
    costs what the measured world size paid for a proportionally larger one. The fixed (latency) part is
    kept as measured: inside one NVSwitch node NCCL's low-latency protocols keep small all-reduces nearly
    flat in GPU count. Assumes the same per-GPU link bandwidth (one NVSwitch node, not a multi-node fabric).
    """
    m, n = measured_world_size, world_size
    traffic_ratio = ((n - 1) / n) / ((m - 1) / m)
    return CommCurve(measured.log_bytes - np.log(traffic_ratio), measured.log_ms)
