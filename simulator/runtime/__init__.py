"""The fitted runtime model: measured profile tables -> a fast predictor of one iteration's time.

Entry points:
  build_predictor(model, hardware, tp, pp, cpu_overhead_s=None, engine="vllm_v1") -> RuntimePredictor
  predict_batch("llama-2-7b", "h100", [[4096, 0], [1, 1024]], engine="vllm_v0") -> Breakdown (one batch, ms)
Iterations are priced as the engine profile (simulator/engine.py, conf/engine/) launches them.
See docs/runtime_model.md.
"""
from simulator.runtime.predictor import Breakdown, RuntimePredictor, build_predictor, predict_batch
from simulator.runtime.tables import ProfileError

__all__ = ["Breakdown", "ProfileError", "RuntimePredictor", "build_predictor", "predict_batch"]
