"""The contract between the simulator and whatever predicts how long an iteration takes.

A batch is described by two aligned integer sequences (lists of ints, as the simulator passes them, or
int64 arrays), one entry per sequence in the batch:
  q_tokens[i]  tokens of sequence i computed this iteration (a prefill chunk's length, or 1 for a decode)
  kv_tokens[i] tokens of sequence i already in the KV cache before this iteration
The fitted runtime model (`simulator.runtime`) implements this protocol from measured GPU profiles.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class IterationTimePredictor(Protocol):
    """Predicts one iteration's time on one replica (all its TP workers and PP stages)."""

    num_stages: int  # pipeline-parallel stages; 1 without pipeline parallelism

    def stage_times_s(self, q_tokens: Sequence[int], kv_tokens: Sequence[int]) -> np.ndarray:
        """Seconds each pipeline stage spends on this batch, shape (num_stages,).

        A stage's time includes its layers, its tensor-parallel all-reduces and the send of its
        activations to the next stage. The per-iteration CPU overhead is counted in stage 0.
        """
        ...

    def decode_run_stage_times_s(self, kv_tokens: Sequence[int], num_steps: int) -> np.ndarray:
        """Stage times of `num_steps` consecutive decode-only iterations of the same sequences, shape
        (num_steps, num_stages). Step k sees contexts kv_tokens + k (every sequence gains one token a
        step). Must equal calling stage_times_s step by step; exists so runs of decodes are vectorised.
        """
        ...
