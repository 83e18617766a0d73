"""The iteration-time predictor the simulator calls: fitted op tables + attention model + comm + CPU.

One iteration of a batch (q_tokens[i] new tokens, kv_tokens[i] cached, per sequence) on a replica of
`tp` x `pp` GPUs costs, per pipeline stage:
  its layers x (token-wise ops at N = sum(q) tokens + one attention launch + 2 TP all-reduces of
  N x hidden x dtype bytes), plus
  stage 0: the embedding (+ its all-reduce when tp > 1) and the CPU overhead of the iteration,
  last stage: the final norm over N tokens, LM head and sampling over one row per sequence (+ the
  gather of the logits when tp > 1),
  every stage but the last: the send of N x hidden activations to the next stage.
Layers are split evenly over stages, earlier stages taking one more when they do not divide.
How the batch becomes GPU work follows an engine profile (simulator/engine.py, conf/engine/):
  attention   fused_varlen: one launch over every sequence (the fitted model of launches with a chunk, or
              of decode-only launches); split: the chunks' launch plus the decodes' launch, each priced as
              measured alone, plus the profile's gap; packed_gqa needs a profile table no GPU here has;
  graphs      a batch replayed from a full CUDA graph (decode-only, up to the profile's limit) or from
              piecewise graphs runs its token-wise kernels at the padded capture size; a batch launched op
              by op (or piecewise) takes, per stage, the soft maximum of its kernel time and the profile's
              launch floor (its layers x the host's launch time per layer; simulator/runtime/cpu_overhead.py);
  host        the profile's host time per iteration comes on top of stage 0's GPU time, or overlaps it
              (max of the two) with async scheduling.

Hot path: everything but attention is tabulated per stage at build time (from the op tables of
simulator/runtime/token_tables.py) as two lists indexed by the token count and the sequence count, so
an iteration costs two list look-ups plus one attention time (simulator/runtime/attention_time.py): a
few numpy reductions and scalar dot products for a batch with a prefill chunk; a decode-only batch is a one-step decode run, and a decode run of any length costs a
dozen array operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.config import ConfigError, ModelConfig
from simulator.engine import EngineProfile
from simulator.runtime.attention_time import AttentionTime
from simulator.runtime.cpu_overhead import launch_bound_s
from simulator.runtime.features import FEW_SEQUENCES, batch_attention_features
from simulator.runtime.fitted import FittedRuntime
from simulator.runtime.token_tables import TokenTable, layers_per_stage, op_tables

BREAKDOWN_KEYS = ("attention_prefill", "attention_decode", "linear", "other_ops", "communication",
                  "lm_head_sampling", "launch_wait", "cpu_overhead")


@dataclass(frozen=True)
class Breakdown:
    """One batch's predicted time: total, per category and per stage, in milliseconds."""

    total_ms: float
    breakdown_ms: dict
    stage_ms: list
    calibration: dict | None = None  # RuntimePredictor.calibration (printed by the CLI, not in as_json)
    engine: str = ""  # the engine profile the batch was priced under
    transferred_from: str = ""  # the profiled GPU whose tables were transferred ("" = measured on this GPU)

    def as_json(self) -> dict:
        return {"total_ms": self.total_ms, "breakdown_ms": self.breakdown_ms, "stage_ms": self.stage_ms,
                "engine": self.engine, "transferred_from": self.transferred_from}


class RuntimePredictor:
    """IterationTimePredictor (simulator/predictor.py) backed by a FittedRuntime."""

    def __init__(self, fitted: FittedRuntime, model: ModelConfig, pp: int, engine: EngineProfile,
                 comm_frame=None, comm_path: Path | None = None, communication: bool = True):
        """engine: how batches are launched and what the host costs (simulator/engine.py).
        communication=False leaves the all-reduces and sends out: kernel times of one GPU's shard only
        (what a whole-iteration validation run measures, see kernel_sum_ms)."""
        if engine.attention_launch == "packed_gqa":  # build_predictor says which profile table is missing
            raise ConfigError(f"engine {engine.name}: attention_launch=packed_gqa has no profile data")
        self.fitted = fitted
        self.model = model
        self.tp = fitted.tp
        self.num_stages = pp
        self.engine = engine
        self.stage_layers = layers_per_stage(model.num_layers, pp)
        self._coef = np.asarray(fitted.attention_coef, dtype=np.float64)
        self.attention = AttentionTime(self._coef, fitted.attention_shape(), fitted.attention_trees,
                                       fitted.decode_attention_coef, fitted.decode_attention_trees)

        grid = fitted.grid_tokens
        self._tables = op_tables(fitted, model, pp, comm_frame, comm_path, communication)
        # The hot path: per stage, one table of everything that depends on the token count N (its
        # layers' token-wise kernels and all-reduces, the embedding, the final norm, the send), one of
        # everything that depends on the sequence count (LM head, sampling, logits gather),
        # and the weight of one layer's attention time. Seconds; kernel times calibrated. The CPU overhead
        # and the eager-launch floor are applied per batch (stage_times_s).
        self._scale = fitted.calibration_scale
        self._layer_extra_ms = fitted.calibration_layer_ms
        v = {name: table.values for name, table in self._tables.items()}
        per_layer = (v["linear"] + v["layer_other"]) * self._scale + self._layer_extra_ms + v["layer_comm"]
        last = pp - 1
        self._stage_tokens, self._stage_seqs, self._stage_attention = [], [], []
        self._set_engine_terms(engine)
        for s, layers in enumerate(self.stage_layers):
            tokens_ms = per_layer * layers + (v["send"] if s < last else 0.0)
            seqs_ms = np.zeros_like(grid)
            if s == 0:
                tokens_ms = tokens_ms + self._scale * v["embedding"] + v["embedding_comm"]
            if s == last:
                tokens_ms = tokens_ms + self._scale * v["final_norm"]
                seqs_ms = seqs_ms + self._scale * v["lm_head_sampling"] + v["logits_comm"]
            self._stage_tokens.append(TokenTable(grid, tokens_ms * 1e-3))
            self._stage_seqs.append(TokenTable(grid, seqs_ms * 1e-3))
            self._stage_attention.append(self._scale * float(layers) * 1e-3)

    @property
    def calibration(self) -> dict:
        """How kernel times are mapped to whole forwards (docs/runtime_model.md), for run summaries."""
        f = self.fitted
        return {"scale": f.calibration_scale, "per_layer_ms": f.calibration_layer_ms,
                "source": f.calibration_source or "none", "measured_rows": f.calibration_rows}

    # ------------------------------------------------------------------ protocol

    def stage_times_s(self, q_tokens: np.ndarray, kv_tokens: np.ndarray) -> np.ndarray:
        """Seconds each pipeline stage spends on this batch, shape (num_stages,)."""
        if isinstance(q_tokens, list) and isinstance(kv_tokens, list) and len(q_tokens) <= FEW_SEQUENCES:
            q, kv = q_tokens, kv_tokens  # the simulator's lists: summed in Python, no array conversions
            n = len(q)
            if len(kv) != n or n == 0:
                raise ValueError(f"q_tokens and kv_tokens must be equal-length non-empty sequences, "
                                 f"got lengths {n} and {len(kv)}")
        else:
            q = q_tokens if isinstance(q_tokens, np.ndarray) else np.asarray(q_tokens)
            kv = kv_tokens if isinstance(kv_tokens, np.ndarray) else np.asarray(kv_tokens)
            n = len(q)
            if q.shape != kv.shape or q.ndim != 1 or n == 0:
                raise ValueError(f"q_tokens and kv_tokens must be equal-length non-empty 1-D arrays, "
                                 f"got shapes {q.shape} and {kv.shape}")
        # Decode-only batches take the same arithmetic as decode_run_stage_times_s (bit for bit).
        if self._split_attention:
            attention_ms, num_tokens = self.attention.split_batch_ms(q, kv, self._split_gap_ms)
        else:
            attention_ms, num_tokens = self.attention.batch_ms(q, kv)
        padded, floor_s = self._launch(num_tokens, n)
        if self.num_stages == 1:
            gpu_s = (self._stage_tokens[0].at(padded) + self._stage_seqs[0].at(n)) \
                + attention_ms * self._stage_attention[0]
            if floor_s is not None:
                gpu_s = launch_bound_s(gpu_s, floor_s[0], self._overlap_exponent)
            host_s = self._host_fixed_s + self._host_per_sequence_s * n
            if self._async:
                return np.array([gpu_s if gpu_s > host_s else host_s])  # noqa: FURB136 - hot path
            return np.array([gpu_s + host_s])
        gpu_s = np.array([(tokens.at(padded) + seqs.at(n)) + attention_ms * weight for tokens, seqs, weight
                          in zip(self._stage_tokens, self._stage_seqs, self._stage_attention)])
        if floor_s is not None:
            gpu_s = launch_bound_s(gpu_s, floor_s, self._overlap_exponent)
        host_s = self._host_fixed_s + self._host_per_sequence_s * n
        gpu_s[0] = max(gpu_s[0], host_s) if self._async else gpu_s[0] + host_s
        return gpu_s

    def _set_engine_terms(self, engine: EngineProfile) -> None:
        """Precompute the engine profile's launch and host terms for the hot path."""
        self._split_attention = engine.attention_launch == "split"
        self._split_gap_ms = engine.split_launch_gap_us * 1e-3
        self._graph_decode_max = engine.graph_max_decode_batch if engine.cuda_graphs != "none" else 0
        self._piecewise_max = engine.graph_max_tokens if engine.cuda_graphs == "piecewise" else 0
        limit = max(self._graph_decode_max, self._piecewise_max)
        # Token count each graph-replayed count runs at (index: real count).
        self._padded = [engine.padded_tokens(t, t if t <= self._graph_decode_max else 1) for t in range(limit + 1)]
        self._eager_floor_s, self._piecewise_floor_s = (
            self.stage_layers * (floor_ms * 1e-3) if floor_ms > 0 else None
            for floor_ms in (engine.launch_floor_ms_per_layer(path) for path in ("eager", "piecewise")))
        self._overlap_exponent = engine.eager_overlap_exponent
        self._host_fixed_s = engine.cpu_overhead_ms * 1e-3
        self._host_per_sequence_s = engine.cpu_overhead_per_sequence_ms * 1e-3
        self._async = engine.async_scheduling

    def _launch(self, num_tokens: int, num_sequences: int):
        """(tokens the token-wise kernels run at, per-stage launch floor in seconds or None) of a batch."""
        if num_tokens == num_sequences and num_sequences <= self._graph_decode_max:
            return self._padded[num_tokens], None  # a full CUDA graph: no launch floor
        if num_tokens <= self._piecewise_max:
            return self._padded[num_tokens], self._piecewise_floor_s
        return num_tokens, self._eager_floor_s

    def decode_run_stage_times_s(self, kv_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        """Stage seconds of `num_steps` decode-only iterations, step k at contexts kv_tokens + k,
        shape (num_steps, num_stages); equal to calling stage_times_s step by step."""
        kv = kv_tokens if isinstance(kv_tokens, np.ndarray) else np.asarray(kv_tokens)
        n = len(kv)
        if kv.ndim != 1 or n == 0 or num_steps < 0:
            raise ValueError(f"kv_tokens must be a non-empty 1-D array and num_steps >= 0, "
                             f"got shape {kv.shape}, num_steps={num_steps}")
        if num_steps == 0:
            return np.zeros((0, self.num_stages))
        attention_ms = self.attention.decode_run_ms(kv, num_steps)
        padded, floor_s = self._launch(n, n)  # the same for every step of the run
        host_s = self._host_fixed_s + self._host_per_sequence_s * n
        if self.num_stages == 1:
            fixed = self._stage_tokens[0].at(padded) + self._stage_seqs[0].at(n)
            gpu_s = fixed + attention_ms * self._stage_attention[0]
            if floor_s is not None:
                gpu_s = launch_bound_s(gpu_s, floor_s[0], self._overlap_exponent)
            total_s = np.maximum(gpu_s, host_s) if self._async else gpu_s + host_s
            return total_s.reshape(num_steps, 1)
        gpu_s = np.column_stack([(tokens.at(padded) + seqs.at(n)) + attention_ms * weight for tokens, seqs, weight
                                 in zip(self._stage_tokens, self._stage_seqs, self._stage_attention)])
        if floor_s is not None:
            gpu_s = launch_bound_s(gpu_s, floor_s, self._overlap_exponent)
        gpu_s[:, 0] = np.maximum(gpu_s[:, 0], host_s) if self._async else gpu_s[:, 0] + host_s
        return gpu_s

    # ------------------------------------------------------------------ breakdown

    def breakdown(self, q_tokens, kv_tokens) -> Breakdown:
        """The iteration's time split by op category and by stage (milliseconds).

        total_ms is the sum over stages (one batch's latency through the pipeline).
        """
        q = np.asarray(q_tokens, dtype=np.int64)
        kv = np.asarray(kv_tokens, dtype=np.int64)
        stage_ms = self.stage_times_s(q, kv) * 1e3
        n, seqs = int(q.sum()), len(q)
        layers = float(self.stage_layers.sum())
        prefill_ms, decode_ms = self._attention_parts_ms(q, kv)
        attention = prefill_ms + decode_ms
        padded, floor_s = self._launch(n, seqs)  # graph-replayed batches run their kernels padded
        t = self._tables
        tables_ms = {name: table.ms(seqs if name in ("lm_head_sampling", "logits_comm") else padded)
                     for name, table in t.items()}
        k = self._scale  # kernel times are calibrated; communication and host terms are not
        out = {
            "attention_prefill": k * prefill_ms * layers,
            "attention_decode": k * decode_ms * layers,
            "linear": k * tables_ms["linear"] * layers,
            "other_ops": k * (tables_ms["layer_other"] * layers + tables_ms["embedding"] + tables_ms["final_norm"])
            + self._layer_extra_ms * layers,
            "communication": tables_ms["layer_comm"] * layers + tables_ms["embedding_comm"]
            + tables_ms["logits_comm"] + tables_ms["send"] * (self.num_stages - 1),
            "lm_head_sampling": k * tables_ms["lm_head_sampling"],
        }
        # The engine profile's host terms, each once: the GPU waiting for a launch from the host beyond its
        # kernels (the launch floor), and the host time of the iteration that the GPU does not hide.
        kernels_s = np.array([tokens.at(padded) + seq.at(seqs) + attention * weight for tokens, seq, weight
                              in zip(self._stage_tokens, self._stage_seqs, self._stage_attention)])
        gpu_s = kernels_s if floor_s is None else launch_bound_s(kernels_s, floor_s, self._overlap_exponent)
        host_s = self._host_fixed_s + self._host_per_sequence_s * seqs
        out["launch_wait"] = float((gpu_s - kernels_s).sum()) * 1e3
        out["cpu_overhead"] = (max(0.0, host_s - float(gpu_s[0])) if self._async else host_s) * 1e3
        return Breakdown(total_ms=float(stage_ms.sum()), breakdown_ms=out, stage_ms=stage_ms.tolist(),
                         calibration=self.calibration, engine=self.engine.name,
                         transferred_from=self.fitted.transferred_from)

    def _attention_parts_ms(self, q: np.ndarray, kv: np.ndarray) -> tuple[float, float]:
        """(prefill, decode) milliseconds of one layer's attention of the batch, as the engine launches it."""
        chunks = q > 1
        if not chunks.any():
            return 0.0, self.attention.decode_ms(kv)
        if self._split_attention:
            decodes = kv[~chunks]
            decode_ms = self.attention.decode_ms(decodes) + self._split_gap_ms if len(decodes) else 0.0
            return self.attention.chunks_ms(q[chunks], kv[chunks]), decode_ms
        whole, _ = self.attention.batch_ms(q, kv)
        if chunks.all():
            return whole, 0.0
        # One fused launch: attribute it to prefill and decode by the chunks' share of its own terms (fixed
        # and throughput), the chunks' terms computed as if launched alone, over the whole launch's.
        own = self._coef.sum(axis=0)
        all_terms = float(np.asarray(batch_attention_features(q, kv, self.attention.shape)) @ own)
        alone = float(np.asarray(batch_attention_features(q[chunks], kv[chunks], self.attention.shape)) @ own)
        share = min(1.0, alone / all_terms) if all_terms > 0 else float(chunks.mean())
        return whole * share, whole * (1 - share)
