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

Hot path: everything but attention is tabulated per stage at build time as two lists indexed by the
token count and the sequence count, so an iteration costs two list look-ups plus one attention time
(simulator/runtime/attention_time.py): a few numpy reductions and scalar dot products for a batch with
a prefill chunk; a decode-only batch is a one-step decode run, and a decode run of any length costs a
dozen array operations.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.config import (
    ConfigError,
    HardwareConfig,
    ModelConfig,
    from_dict,
    load_hardware_config,
    load_model_config,
)
from simulator.engine import EngineProfile, load_engine_profile
from simulator.paths import PROFILES_DIR
from simulator.runtime import cache
from simulator.runtime.attention_time import AttentionTime
from simulator.runtime.comm import comm_curve
from simulator.runtime.cpu_overhead import kernels_only, launch_bound_s, with_cpu_overhead
from simulator.runtime.features import FEW_SEQUENCES, batch_attention_features
from simulator.runtime.fitted import GRID_DENSE_TOKENS, FittedRuntime, code_version
from simulator.runtime.tables import (
    ProfileError,
    ProfileFiles,
    file_digest,
    profile_files,
    read_comm,
    read_iterations,
    read_meta,
    validation_csv,
    validation_csvs,
)
from simulator.runtime.transfer import transfer_calibration, transfer_pair, write_transferred_tables

LINEAR_OPS = ("qkv_proj", "attn_out_proj", "mlp_up_gate", "mlp_down")
# Per layer: two norms and two residual adds (before attention and before the MLP).
LAYER_OTHER_OPS = {"rope": 1, "act": 1, "rmsnorm": 2, "residual_add": 2}
MIN_CALIBRATION_ROWS = 10  # measured whole iterations needed to fit a calibration
BREAKDOWN_KEYS = ("attention_prefill", "attention_decode", "linear", "other_ops", "communication",
                  "lm_head_sampling", "launch_wait", "cpu_overhead")


def layers_per_stage(num_layers: int, pp: int) -> np.ndarray:
    """Layers of each pipeline stage: an even split, earlier stages taking the remainder."""
    if pp < 1 or pp > num_layers:
        raise ConfigError(f"cluster.pp={pp} must be between 1 and the model's {num_layers} layers")
    base, extra = divmod(num_layers, pp)
    return np.array([base + (1 if s < extra else 0) for s in range(pp)], dtype=np.float64)


class TokenTable:
    """Something that depends only on a token (or sequence) count, tabulated on the fit grid."""

    def __init__(self, grid_tokens: np.ndarray, values: np.ndarray):
        self.grid = np.asarray(grid_tokens, dtype=np.float64)
        self.values = np.asarray(values, dtype=np.float64)
        # List indexing is the fastest lookup; dense[n] is the value at count n (the grid starts at 1).
        self.dense = [0.0] + self.values[:GRID_DENSE_TOKENS].tolist()

    def at(self, n: int) -> float:
        """Value at count `n` (exact grid value, interpolated, or linear beyond the grid)."""
        if n <= GRID_DENSE_TOKENS:
            return self.dense[n]
        if n <= self.grid[-1]:
            return float(np.interp(n, self.grid, self.values))
        return float(self.values[-1] * n / self.grid[-1])

    ms = at  # the tables of self._tables hold milliseconds


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

        grid, ops = fitted.grid_tokens, fitted.op_ms
        activation_bytes = grid * model.hidden_size * model.dtype_bytes  # N tokens x hidden
        zeros = np.zeros_like(grid)
        all_reduce = send = None
        if communication and (fitted.tp > 1 or pp > 1) and comm_frame is None:
            raise ConfigError("tp > 1 or pp > 1 needs the communication tables (comm.csv)")
        if communication and fitted.tp > 1:
            all_reduce = comm_curve(comm_frame, comm_path, "all_reduce", fitted.tp)
        if communication and pp > 1:
            send = comm_curve(comm_frame, comm_path, "send_recv", 2)
        layer_comm = 2 * all_reduce.ms(activation_bytes) if all_reduce else zeros
        # All-gather of per-rank logits shards (n x vocab/tp) moves as many bytes per rank as an
        # all-reduce of tp/2 shards; the tables hold all-reduce, so use that equivalent size.
        logits_bytes = grid * -(-model.vocab_size // fitted.tp) * model.dtype_bytes * fitted.tp / 2
        self._tables = {
            "linear": TokenTable(grid, sum(ops[o] for o in LINEAR_OPS)),
            "layer_other": TokenTable(grid, sum(k * ops[o] for o, k in LAYER_OTHER_OPS.items())),
            "layer_comm": TokenTable(grid, layer_comm),
            "embedding": TokenTable(grid, ops["embedding"]),
            "embedding_comm": TokenTable(grid, all_reduce.ms(activation_bytes) if all_reduce else zeros),
            "final_norm": TokenTable(grid, ops["rmsnorm"]),
            "lm_head_sampling": TokenTable(grid, ops["lm_head"] + ops["sampling"]),
            "logits_comm": TokenTable(grid, all_reduce.ms(logits_bytes) if all_reduce else zeros),
            "send": TokenTable(grid, send.ms(activation_bytes) if send else zeros),
        }
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


# ---------------------------------------------------------------------- building


def fitted_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                   cache_directory: Path | None = None, progress: bool = False,
                   attention_launch: str = "fused_varlen") -> FittedRuntime:
    """The FittedRuntime of (model, hardware, tp), calibrated for `attention_launch`: from the on-disk cache
    when it is valid, else fitted (then cached). The fit itself is cached apart from its calibration, so a
    second launch mode only recalibrates. The keys cover the profile files' bytes, the configs, tp and the
    code; the calibrated entry also the launch mode and every whole-iteration measurement of the GPU (a fit
    may borrow another model's calibration)."""
    version = code_version()
    base_key = _base_key(model, hardware, tp, files, version)
    launches = ["fused_varlen"] + ([attention_launch] if attention_launch != "fused_varlen" else [])
    measured = [path for launch in launches for path in validation_csvs(hardware, attention_launch=launch)]
    key = cache.cache_key([base_key, attention_launch,
                           *(f"{path.parent.name}/{path.name}:{file_digest([path])}" for path in measured)])
    fitted = cache.load(key, version, cache_directory)
    if fitted is not None:
        return fitted
    fitted = dataclasses.replace(uncalibrated_runtime(model, hardware, tp, files, cache_directory, progress))
    calibrated = False
    for launch in reversed(launches):  # this launch mode's own forwards first, then the fused ones
        validation = validation_csv(model, hardware, attention_launch=launch)
        if validation.exists() and calibrate(fitted, model, read_iterations(validation), launch):
            if launch != attention_launch:
                fitted.calibration_source = f"measured ({launch} forwards)"
            calibrated = True
            break
    if not calibrated:
        borrow_calibration(fitted, hardware, files, cache_directory, progress)
    _save(fitted, key, version, cache_directory)
    return fitted


def _base_key(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles, version: str) -> str:
    return cache.cache_key([
        version, file_digest([files.ops_csv, files.attention_csv, files.meta_json]),
        json.dumps(model.__dict__, sort_keys=True), json.dumps(hardware.__dict__, sort_keys=True), str(tp),
    ])


def uncalibrated_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                         cache_directory: Path | None = None, progress: bool = False) -> FittedRuntime:
    """The fit of `files`' tables alone (no calibration): from the cache when valid, else fitted and cached."""
    version = code_version()
    base_key = _base_key(model, hardware, tp, files, version)
    fitted = cache.load(base_key, version, cache_directory)
    if fitted is None:
        from simulator.runtime.fit import fit_runtime  # scikit-learn and SciPy: only when fitting

        fitted = fit_runtime(model, hardware, tp, files, progress=progress)
        _save(fitted, base_key, version, cache_directory)
    return fitted


def transferred_files(model: ModelConfig, hardware: HardwareConfig, profiles_dir: Path = PROFILES_DIR,
                      cache_directory: Path | None = None) -> ProfileFiles:
    """The profile set of `model` on `hardware` transferred from `hardware.transfer_from`'s measured tables
    (simulator/runtime/transfer.py), written under the cache directory; communication tables measured
    for `hardware` win over transferred ones. ProfileError when the source has no tables of the model;
    ConfigError naming the field when either GPU's YAML lacks a fact the transfer needs."""
    source_hw = load_hardware_config(hardware.transfer_from)
    source = profile_files(model, source_hw, profiles_dir)
    out_root = Path(cache_directory or cache.cache_dir()) / "transferred" / f"from-{source_hw.profile}"
    out_dir = out_root / hardware.profile / model.name
    measured_comm = Path(profiles_dir) / hardware.comm_profile / "comm"
    comm_dir = measured_comm if (measured_comm / "comm.csv").exists() else out_root / hardware.comm_profile / "comm"
    write_transferred_tables(source.profile_dir, source.comm_dir, out_dir, out_root / hardware.comm_profile / "comm",
                             source_hw, hardware)
    return ProfileFiles(profile_dir=out_dir, comm_dir=comm_dir)


def transferred_runtime(model: ModelConfig, hardware: HardwareConfig, tp: int, files: ProfileFiles,
                        profiles_dir: Path = PROFILES_DIR, cache_directory: Path | None = None,
                        progress: bool = False, attention_launch: str = "fused_varlen") -> FittedRuntime:
    """The FittedRuntime of `model` on `hardware` fitted to `files` (transferred_files: tables transferred
    from `hardware.transfer_from`), calibrated as that GPU's own fit of the model is (never on measured
    forwards of `hardware`: what is transferred is predicted, not fitted to the target)."""
    source_hw = load_hardware_config(hardware.transfer_from)
    fitted = uncalibrated_runtime(model, hardware, tp, files, cache_directory, progress)
    source_files = profile_files(model, source_hw, profiles_dir)
    source_fit = fitted_runtime(model, source_hw, tp, source_files, cache_directory, progress, attention_launch)
    source, target = transfer_pair(source_hw, hardware, read_meta(source_files.meta_json))  # memory ceilings
    return transfer_calibration(fitted, source_fit, source, target)


def _save(fitted: FittedRuntime, key: str, version: str, cache_directory: Path | None) -> None:
    try:
        cache.save(fitted, key, version, cache_directory)
    except OSError:
        pass  # a read-only cache directory only costs a refit next time


def borrow_calibration(fitted: FittedRuntime, hardware: HardwareConfig, files: ProfileFiles,
                       cache_directory: Path | None = None, progress: bool = False) -> None:
    """Calibrate a fit whose model and TP degree have no measured whole iterations from those measured
    on the same GPU: the same model at another TP degree (the nearest), else the mean over the other
    models. The calibration is a property of the GPU and of running a forward pass kernel after kernel
    (fit_iteration_calibration): measured, it differs by 1-2 % between models of one GPU, while none at
    all leaves every prediction about 6 % fast (docs/runtime_model.md)."""
    sources = []  # (model, tp) measured on this GPU with enough rows to calibrate
    for path in validation_csvs(hardware):
        counts = read_iterations(path)["tp"].value_counts()
        sources += [(path.parent.name, int(t)) for t, n in counts.items() if n >= MIN_CALIBRATION_ROWS]
    same_model = sorted((abs(t - fitted.tp), t) for name, t in sources if name == fitted.model_name)
    chosen = ([(fitted.model_name, same_model[0][1])] if same_model
              else sorted(s for s in sources if s[0] != fitted.model_name))
    profiles_dir = files.profile_dir.parents[1]
    scales, per_layer, used = [], [], []
    for name, tp in chosen:
        try:  # measured at this tp, the source calibrates itself: no recursion
            other = load_model_config(name)
            source = fitted_runtime(other, hardware, tp, profile_files(other, hardware, profiles_dir),
                                    cache_directory, progress)
        except ConfigError:  # measurements of a model without a config or profiles here: not a source
            continue
        scales.append(source.calibration_scale)
        per_layer.append(source.calibration_layer_ms)
        used.append(f"{name} tp={tp}")
    if used:
        fitted.calibration_scale = float(np.mean(scales))
        fitted.calibration_layer_ms = float(np.mean(per_layer))
        fitted.calibration_source = "borrowed from " + ", ".join(used)


def forward_times_ms(fitted: FittedRuntime, model: ModelConfig, iterations, engine: EngineProfile) -> np.ndarray:
    """Predicted milliseconds of each measured whole iteration (rows of read_iterations) under `engine`,
    without communication: a validation run times one TP shard's forward on one GPU (docs/profiler.md),
    and may time fewer layers than the model has (each row's num_layers)."""
    predictors: dict[int, RuntimePredictor] = {}
    predicted = np.empty(len(iterations))
    for i, row in enumerate(iterations.itertuples()):
        layers = int(row.num_layers)
        if layers not in predictors:
            predictors[layers] = RuntimePredictor(fitted, dataclasses.replace(model, num_layers=layers), 1,
                                                  engine, communication=False)
        predicted[i] = predictors[layers].stage_times_s(row.composition[:, 0], row.composition[:, 1]).sum() * 1e3
    return predicted


def kernel_sum_ms(fitted: FittedRuntime, model: ModelConfig, iterations,
                  attention_launch: str = "fused_varlen") -> np.ndarray:
    """The uncalibrated sum of kernel times of each measured whole iteration (rows of read_iterations),
    attention launched as `attention_launch`: what fit_iteration_calibration scales. No host terms and no
    graph padding: a validation run replays the forward from one CUDA graph."""
    raw = dataclasses.replace(fitted, calibration_scale=1.0, calibration_layer_ms=0.0)
    return forward_times_ms(raw, model, iterations, kernels_only(attention_launch))


def calibrate(fitted: FittedRuntime, model: ModelConfig, iterations, attention_launch: str = "fused_varlen") -> bool:
    """Set fitted's calibration from measured whole iterations of the same TP degree (their attention
    launched as `attention_launch`); False (and no change) when fewer than MIN_CALIBRATION_ROWS were
    measured."""
    from simulator.runtime.fit import fit_iteration_calibration  # SciPy: only when fitting

    rows = iterations[iterations["tp"] == fitted.tp]
    if len(rows) < MIN_CALIBRATION_ROWS:
        return False
    fitted.calibration_scale, fitted.calibration_layer_ms = fit_iteration_calibration(
        kernel_sum_ms(fitted, model, rows, attention_launch), rows["time_ms"].to_numpy(dtype=float),
        rows["num_layers"].to_numpy(dtype=float))
    fitted.calibration_rows = len(rows)
    fitted.calibration_source = "measured"
    return True


def profile_source(model: ModelConfig, hardware: HardwareConfig, profiles_dir: Path = PROFILES_DIR) -> str:
    """The GPU profile whose measured tables price `model` on `hardware`: its own where measured (a measured
    profile always wins), else `hardware.transfer_from`'s, through the transfer. Without either, the
    ProfileError naming the missing directory."""
    try:
        profile_files(model, hardware, profiles_dir)
        return hardware.profile
    except ProfileError:
        if not hardware.transfer_from:
            raise
    try:
        source_hw = load_hardware_config(hardware.transfer_from)
    except ConfigError as e:
        raise ConfigError(f"conf/hardware/{hardware.name}.yaml: transfer_from='{hardware.transfer_from}': {e}") from None
    profile_files(model, source_hw, profiles_dir)  # the source must have measured the model
    return source_hw.profile


def build_predictor(model: ModelConfig, hardware: HardwareConfig, tp: int, pp: int,
                    cpu_overhead_s: float | None = None, *, engine: EngineProfile | str = "vllm_v1",
                    profiles_dir: Path = PROFILES_DIR, cache_directory: Path | None = None,
                    progress: bool = False) -> RuntimePredictor:
    """The iteration-time predictor of `model` on `hardware` with `tp` x `pp` GPUs per replica, pricing
    batches as `engine` (an EngineProfile or a conf/engine name) launches them.

    cpu_overhead_s: None = the engine profile's host terms; seconds = that constant per iteration instead
    (and no launch floors; 0 = none). Raises ProfileError (a ConfigError) naming the missing directory or
    file when the GPU, model, TP degree, communication tables or the engine's attention mode were not
    profiled.
    """
    model.validate_tp(tp)
    if pp < 1:
        raise ConfigError(f"cluster.pp={pp} must be >= 1")
    engine = with_cpu_overhead(load_engine_profile(engine), cpu_overhead_s)
    transfer = profile_source(model, hardware, profiles_dir) != hardware.profile
    files = transferred_files(model, hardware, profiles_dir, cache_directory) if transfer \
        else profile_files(model, hardware, profiles_dir)
    if engine.attention_launch == "packed_gqa":
        raise ProfileError(
            f"engine {engine.name}: attention_launch=packed_gqa needs {files.profile_dir / 'attention_packed_gqa.csv'} "
            f"(launches of a varlen kernel that packs grouped-query heads), which was not profiled: torch exposes "
            f"no such kernel on the profiled GPUs (docs/engine_profiles.md); use attention_launch=split")
    comm_frame = read_comm(files.comm_csv) if tp > 1 or pp > 1 else None
    if transfer:
        fitted = transferred_runtime(model, hardware, tp, files, profiles_dir, cache_directory, progress,
                                     engine.attention_launch)
    else:
        fitted = fitted_runtime(model, hardware, tp, files, cache_directory, progress, engine.attention_launch)
    return RuntimePredictor(fitted, model, pp, engine, comm_frame, files.comm_csv)


def _config(cls, loader, name_or_path: str):
    """A conf/ name (llama-3-8b, h100) or the path of a YAML file with the dataclass's fields."""
    if str(name_or_path).endswith((".yaml", ".yml")):
        import yaml

        path = Path(name_or_path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return from_dict(cls, yaml.safe_load(path.read_text()) or {}, str(path))
    return loader(name_or_path)


def predict_batch(model: str, hardware: str, batch, tp: int = 1, pp: int = 1,
                  cpu_overhead_ms: float | None = None, engine: str = "vllm_v1", **kwargs) -> Breakdown:
    """Predict one batch by config names, e.g. predict_batch("llama-2-7b", "h100", [[4096, 0], [1, 1024]]).

    model, hardware, engine: conf/ names, or paths of YAML files with the config's fields.
    batch: [[q_tokens, kv_tokens], ...] per sequence. cpu_overhead_ms: None = the engine's host terms,
    0 = none.
    Returns a Breakdown (milliseconds).
    """
    pairs = np.asarray(batch, dtype=np.int64) if np.ndim(batch) == 2 else np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or (pairs[:, 0] < 1).any() or (pairs[:, 1] < 0).any():
        raise ValueError(f"batch must be a non-empty list of [q_tokens >= 1, kv_tokens >= 0], got {batch!r}")
    predictor = build_predictor(
        _config(ModelConfig, load_model_config, model), _config(HardwareConfig, load_hardware_config, hardware), tp, pp,
        None if cpu_overhead_ms is None else cpu_overhead_ms / 1e3,
        engine=_config(EngineProfile, load_engine_profile, engine), **kwargs,
    )
    return predictor.breakdown(pairs[:, 0], pairs[:, 1])
