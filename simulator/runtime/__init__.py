"""The fitted runtime model: measured profile tables -> a fast predictor of one iteration's time.

Entry points:
  build_predictor(model, hardware, tp, pp, cpu_overhead_s=None) -> RuntimePredictor (the simulator's)
  predict_batch("llama-2-7b", "h100", [[4096, 0], [1, 1024]]) -> Breakdown (one batch, in ms)
See docs/runtime_model.md.
"""
from simulator.runtime.predictor import Breakdown, RuntimePredictor, build_predictor, predict_batch
from simulator.runtime.tables import ProfileError

__all__ = ["Breakdown", "ProfileError", "RuntimePredictor", "build_predictor", "predict_batch"]
