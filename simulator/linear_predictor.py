"""A hand-computable iteration-time predictor, for tests and for users who choose `predictor=linear`.

Every pipeline stage of an iteration takes

    fixed_s + per_prefill_token_s * prefill_tokens + per_decode_token_s * decode_tokens
            + per_kv_token_s * sum(kv_tokens)

where decode_tokens counts sequences computing one token and prefill_tokens sums the others' tokens.
Without explicit coefficients it uses roofline values for the model and GPU (`from_roofline`): an ideal
GPU that streams the stage's weights once per iteration at full memory bandwidth, does 2 FLOPs per
parameter per token at full bf16 throughput, and reads each cached token's K and V once. Real iterations
are slower (kernel efficiency, attention FLOPs, communication, CPU overhead); the fitted runtime model
in simulator/runtime is the realistic default.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import HardwareConfig, LinearPredictorConfig, ModelConfig
from simulator.request import int_list


@dataclass(frozen=True)
class LinearPredictor:
    """Implements simulator.predictor.IterationTimePredictor with one linear formula per stage."""

    fixed_s: float
    per_prefill_token_s: float
    per_decode_token_s: float
    per_kv_token_s: float
    num_stages: int = 1

    @classmethod
    def from_roofline(cls, model: ModelConfig, hardware: HardwareConfig, tp: int = 1,
                      pp: int = 1) -> LinearPredictor:
        """Roofline coefficients for one tp x pp shard of `model` on `hardware` (see module docstring)."""
        bandwidth_bytes_per_s = hardware.memory_bandwidth_tbps * 1e12
        flops_per_s = hardware.bf16_dense_tflops * 1e12
        weight_bytes = model.weight_bytes_per_gpu(tp, pp)
        per_token_s = 2 * (weight_bytes / model.dtype_bytes) / flops_per_s
        return cls(
            fixed_s=weight_bytes / bandwidth_bytes_per_s,
            per_prefill_token_s=per_token_s,
            per_decode_token_s=per_token_s,
            per_kv_token_s=model.kv_bytes_per_token(tp, pp) / bandwidth_bytes_per_s,
            num_stages=pp,
        )

    @classmethod
    def from_config(cls, cfg: LinearPredictorConfig, model: ModelConfig, hardware: HardwareConfig,
                    tp: int = 1, pp: int = 1) -> LinearPredictor:
        """Coefficients from `cfg`, roofline values for those it leaves None."""
        roofline = cls.from_roofline(model, hardware, tp, pp)
        chosen = {name: getattr(cfg, name) for name in
                  ("fixed_s", "per_prefill_token_s", "per_decode_token_s", "per_kv_token_s")}
        return cls(**{name: getattr(roofline, name) if value is None else float(value)
                      for name, value in chosen.items()}, num_stages=pp)

    def _stage_time_s(self, prefill_tokens, decode_tokens, kv_tokens):
        # One expression for the scalar and the vectorised path, so both round identically.
        return (self.fixed_s + self.per_prefill_token_s * prefill_tokens
                + self.per_decode_token_s * decode_tokens + self.per_kv_token_s * kv_tokens)

    def stage_times_s(self, q_tokens: np.ndarray, kv_tokens: np.ndarray) -> np.ndarray:
        """Seconds each stage spends on the batch, shape (num_stages,)."""
        q = int_list(q_tokens)  # Python sums: faster than numpy's for typical batch sizes
        decode_tokens = q.count(1)
        t = self._stage_time_s(sum(q) - decode_tokens, decode_tokens, sum(int_list(kv_tokens)))
        return np.array([t] * self.num_stages)

    def decode_run_stage_times_s(self, kv_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        """Stage times of `num_steps` decode iterations of the same sequences, (num_steps, num_stages)."""
        batch = len(kv_tokens)
        kv_sum = sum(int_list(kv_tokens))
        # Each step's KV term, plus the terms every step shares: the same float operations as
        # _stage_time_s (x + y == y + x exactly), so each time equals stage_times_s's for that step.
        t = np.arange(kv_sum, kv_sum + batch * num_steps, batch) * self.per_kv_token_s
        t += self._stage_time_s(0, batch, 0)
        return np.repeat(t[:, None], self.num_stages, axis=1) if self.num_stages > 1 else t[:, None]
