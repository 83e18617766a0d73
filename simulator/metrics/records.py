"""What a simulation records (per request, per iteration) and the constants every metric shares."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    # What the summary and the SLO checks read: request_latencies' columns or a request_table DataFrame,
    # both through table[column].
    RequestTable = Mapping[str, np.ndarray] | pd.DataFrame


PERCENTILES = (50, 90, 99)
SIGNIFICANT_DIGITS = 7  # summary floats are rounded to this many, so JSON is short and stable

# A per-request table as plain columns: name -> numpy array with one entry per request. The summary and
# the SLO checks read it as it is; only the tables handed to users become pandas DataFrames, which keeps
# pandas (a third of a second to import) out of a simulation that writes no files.
RequestColumns = dict[str, np.ndarray]


@dataclass
class RequestRecords:
    """What happened to each request; all arrays have length n and are indexed by request_id order.

    Times are simulated seconds. A request that never reached a milestone has NaN there.
    `token_times_s` holds every output token's emission time, request after request in request_id
    order; request i's tokens are `token_times_s[token_offsets[i]:token_offsets[i + 1]]`
    (CSR layout, `token_offsets` has n + 1 entries, starting at 0).
    """

    request_id: np.ndarray  # int64
    replica_id: np.ndarray  # int64, -1 if never routed
    arrived_s: np.ndarray  # float64
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64, requested output length
    first_scheduled_s: np.ndarray  # float64, first time any of its work was in a batch
    first_token_s: np.ndarray  # float64
    completed_s: np.ndarray  # float64, NaN if never
    preemptions: np.ndarray  # int64
    rejected: np.ndarray  # bool
    reject_reason: np.ndarray  # object (str), "" when not rejected
    token_times_s: np.ndarray  # float64, all output tokens' emission times
    token_offsets: np.ndarray  # int64, n + 1
    # Optional per-request columns (n entries each) appended to request_table as they are, e.g. the KV
    # transfer time of disaggregated serving (simulator/disagg). Empty for colocated runs.
    extra_columns: dict = field(default_factory=dict)
    # int64: prompt tokens a prefix cache held at the request's first admission (they skip prefill);
    # None: no prefix cache ran (all zeros).
    cached_tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.request_id)


@dataclass
class IterationRecords:
    """One row per batch a pipeline stage executed (with pp > 1 a batch appears once per stage).

    The integer columns may be int32 or int64 (the simulator's recorder keeps int32: tens of millions of
    rows for a million requests); iteration_table gives int64 either way."""

    replica_id: np.ndarray  # int64
    stage: np.ndarray  # int64, pipeline stage index, 0 first
    start_s: np.ndarray  # float64
    duration_s: np.ndarray  # float64
    batch_size: np.ndarray  # int64, requests in the batch
    num_prefill_tokens: np.ndarray  # int64, prompt tokens processed in this iteration
    num_decode_tokens: np.ndarray  # int64, decode tokens (one per decoding request)
    kv_blocks_used: np.ndarray  # int64, KV blocks allocated on the replica when the iteration started
    # int64, blocks no request holds that keep cached KV (prefix caches) then; None: no prefix cache (0).
    # A run of decodes repeats its first step's value.
    kv_blocks_cached: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.start_s)


def check_records(records: RequestRecords) -> None:
    """Raise ValueError naming the field if the arrays do not line up."""
    n = len(records.request_id)
    for f in fields(RequestRecords):
        if f.name in ("token_times_s", "token_offsets", "request_id", "extra_columns"):
            continue
        if f.name == "cached_tokens" and records.cached_tokens is None:
            continue
        if len(getattr(records, f.name)) != n:
            raise ValueError(f"RequestRecords.{f.name} has {len(getattr(records, f.name))} entries, expected {n}")
    for name, column in records.extra_columns.items():
        if len(column) != n:
            raise ValueError(f"RequestRecords.extra_columns['{name}'] has {len(column)} entries, expected {n}")
    offsets = np.asarray(records.token_offsets)
    if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(records.token_times_s):
        raise ValueError(
            f"RequestRecords.token_offsets must have {n + 1} entries from 0 to "
            f"len(token_times_s)={len(records.token_times_s)}"
        )
    if (np.diff(offsets) < 0).any():
        raise ValueError("RequestRecords.token_offsets must be non-decreasing")


def _tokens_per_request(records: RequestRecords) -> np.ndarray:
    return np.diff(np.asarray(records.token_offsets, dtype=np.int64))


def _round(x) -> float | None:
    """A JSON-safe float with SIGNIFICANT_DIGITS digits; None for NaN/inf (JSON null)."""
    x = float(x)
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}") if np.isfinite(x) else None
