"""Latency and throughput metrics from a finished simulation: per-request tables, summary, trace files.

The simulator records what happened in two flat, array-based records (`RequestRecords`,
`IterationRecords`); this module only reads them. Everything is vectorised with numpy so a run with
millions of output tokens summarises in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


@dataclass
class IterationRecords:
    """One row per batch a pipeline stage executed (with pp > 1 a batch appears once per stage)."""

    replica_id: np.ndarray  # int64
    stage: np.ndarray  # int64, pipeline stage index, 0 first
    start_s: np.ndarray  # float64
    duration_s: np.ndarray  # float64
    batch_size: np.ndarray  # int64, requests in the batch
    num_prefill_tokens: np.ndarray  # int64, prompt tokens processed in this iteration
    num_decode_tokens: np.ndarray  # int64, decode tokens (one per decoding request)
    kv_blocks_used: np.ndarray  # int64, KV blocks allocated on the replica when the iteration started
