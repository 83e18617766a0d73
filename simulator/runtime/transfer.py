"""Kernel times of a GPU nobody profiled, transferred from a profiled one (docs/gpu_transfer.md).

Every measured row (an op at a token count, an attention launch, a collective) carries the work it must
do: its FLOPs and the fewest bytes it must move (profiler/schema.py). On the profiled GPU its time is
  bound  the roofline time of that work at the GPU's achievable ceilings, max(FLOPs / FLOP/s,
         bytes / bytes/s), capped at the measured time: the part the hardware's throughput explains;
  rest   the remainder: launch and synchronisation, instruction-bound work (index arithmetic,
         reductions), a GEMM's partly filled last wave.
On the target the bound part becomes the target's roofline time of the same work, so a compute-bound
op scales with achieved FLOP/s, a memory-bound one with achieved bytes/s, and the transition follows
the roofline of each row's own FLOPs and bytes; the rest scales with the SMs' instruction rate (SM
count x boost clock).

Achievable ceilings are datasheet peaks times a fraction. The profiled GPU's meta.json records what a
large GEMM and a streaming read reach (profiler `peaks`), and the target is assumed to reach the same
fraction of its own datasheet. Attention's compute ceiling is the fraction of peak its attention kernel
reaches on long prefills (`attention_efficiency`, from the kernel's paper: FlashAttention-2 reaches
35 % on Hopper and 73 % on Ampere); its KV streaming is capped per SM as well as by memory, at the
bytes per SM the source's fastest launches reached (FlashAttention-2's decode keeps too few loads in
flight to use an H200's extra bandwidth). Collectives: the bound part is the row's bus bandwidth over the best
the table reaches, and scales with the interconnect (NVLink, else PCIe).

Everything above the I/O helpers at the bottom is a pure function of arrays, frames and configs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulator.config import ConfigError, HardwareConfig

if TYPE_CHECKING:
    import pandas as pd

    from simulator.runtime.fitted import FittedRuntime

# Facts of conf/hardware/<gpu>.yaml the transfer reads, on both GPUs (plus an interconnect: NVLink, else PCIe).
TRANSFER_FIELDS = ("bf16_dense_tflops", "memory_bandwidth_tbps", "num_sms", "boost_clock_mhz", "l2_cache_mib",
                   "attention_kernel", "attention_efficiency")
# Fractions of the datasheet peaks assumed reachable when a profile's meta.json recorded none (the
# H100 and H200 profiles record 0.80-0.81 of bf16 peak on an 8192^3 GEMM and 0.88-0.92 of memory bandwidth).
DEFAULT_MATMUL_FRACTION = 0.8
DEFAULT_MEMORY_FRACTION = 0.9


@dataclass(frozen=True)
class Ceilings:
    """What one GPU can reach: FLOP/s of GEMMs and of its attention kernel, bytes/s of memory and of
    the link collectives cross, its SM count and SM cycles per second (SMs x boost clock)."""

    name: str
    matmul_flops_per_s: float
    attention_flops_per_s: float
    bytes_per_s: float
    attention_bytes_per_s: float
    num_sms: int
    link_bytes_per_s: float
    sm_cycles_per_s: float


def check_facts(hardware: HardwareConfig, role: str) -> None:
    """ConfigError naming conf/hardware/<name>.yaml and the first missing or non-positive field the
    transfer needs; `role` ("target", "source") says why it is needed."""
    where = f"conf/hardware/{hardware.name}.yaml"
    for field in TRANSFER_FIELDS:
        value = getattr(hardware, field)
        if value is None or (not isinstance(value, str) and not value > 0):
            raise ConfigError(
                f"{where}: field '{field}' is {'missing' if value is None else f'{value!r}'}; transferring "
                f"kernel times needs it on the {role} GPU (a positive number, with its source; "
                f"docs/gpu_transfer.md)")
    if not (hardware.nvlink_bandwidth_gbps or 0) > 0 and not (hardware.pcie_bandwidth_gbps or 0) > 0:
        raise ConfigError(f"{where}: field 'pcie_bandwidth_gbps' is missing and nvlink_bandwidth_gbps is 0; "
                          f"transferring communication times needs the {role} GPU's interconnect")


def link_gbps(hardware: HardwareConfig) -> float:
    """GB/s of the link tensor- and pipeline-parallel traffic crosses: NVLink where there is one, else PCIe."""
    return hardware.nvlink_bandwidth_gbps if hardware.nvlink_bandwidth_gbps > 0 else hardware.pcie_bandwidth_gbps


def reached_fractions(hardware: HardwareConfig, meta: dict) -> tuple[float, float]:
    """(GEMM, memory) fractions of `hardware`'s datasheet peaks its profile's meta.json measured (defaults
    when it recorded none)."""
    peaks = meta.get("peaks") if isinstance(meta.get("peaks"), dict) else {}
    matmul = peaks.get("matmul_tflops")
    memory = peaks.get("memory_tbps")
    return (matmul / hardware.bf16_dense_tflops if matmul else DEFAULT_MATMUL_FRACTION,
            memory / hardware.memory_bandwidth_tbps if memory else DEFAULT_MEMORY_FRACTION)


def ceilings(hardware: HardwareConfig, matmul_fraction: float, memory_fraction: float,
             attention_bytes_per_sm_s: float | None = None) -> Ceilings:
    """Achievable ceilings of `hardware`, reaching the given fractions of its datasheet peaks.

    attention_bytes_per_sm_s: the bytes/s per SM the attention kernel streams KV at when the SMs, not the
    memory, limit it (FlashAttention-2's decode keeps few loads in flight per SM: on H100 it reaches
    ~3 TB/s and on H200, with 43 % more bandwidth and the same 132 SMs, 2-3 % more); None: memory only.
    """
    peak = hardware.bf16_dense_tflops * 1e12
    bytes_per_s = hardware.memory_bandwidth_tbps * 1e12 * memory_fraction
    attention_bytes_per_s = bytes_per_s if attention_bytes_per_sm_s is None else \
        min(bytes_per_s, attention_bytes_per_sm_s * hardware.num_sms)
    return Ceilings(name=hardware.name, matmul_flops_per_s=peak * matmul_fraction,
                    attention_flops_per_s=peak * hardware.attention_efficiency, bytes_per_s=bytes_per_s,
                    attention_bytes_per_s=attention_bytes_per_s, num_sms=int(hardware.num_sms),
                    link_bytes_per_s=link_gbps(hardware) * 1e9,
                    sm_cycles_per_s=hardware.num_sms * hardware.boost_clock_mhz * 1e6)


def roofline_ms(flops, bytes_, flops_per_s: float, bytes_per_s: float) -> np.ndarray:
    """max(flops / flops_per_s, bytes / bytes_per_s) in milliseconds."""
    return np.maximum(np.asarray(flops, dtype=float) / flops_per_s, np.asarray(bytes_, dtype=float) / bytes_per_s) * 1e3


def transfer_ms(time_ms, flops, bytes_, source: Ceilings, target: Ceilings, compute: str = "matmul") -> np.ndarray:
    """Target milliseconds of work measured at `time_ms` on the source: the part of each time the source's
    roofline explains rescaled to the target's roofline of the same FLOPs and bytes, the rest by the SMs'
    cycles per second. compute: "matmul" (GEMM ceiling) or "attention" (the attention kernel's ceiling)."""
    time_ms = np.asarray(time_ms, dtype=float)
    flops_attr, bytes_attr = f"{compute}_flops_per_s", "attention_bytes_per_s" if compute == "attention" else "bytes_per_s"
    source_roof = roofline_ms(flops, bytes_, getattr(source, flops_attr), getattr(source, bytes_attr))
    target_roof = roofline_ms(flops, bytes_, getattr(target, flops_attr), getattr(target, bytes_attr))
    bound = np.minimum(source_roof, time_ms)
    ratio = np.divide(target_roof, source_roof, out=np.ones_like(time_ms), where=source_roof > 0)
    return bound * ratio + (time_ms - bound) * (source.sm_cycles_per_s / target.sm_cycles_per_s)


def transfer_comm_ms(time_ms, busbw_gbps, best_busbw_gbps, source: Ceilings, target: Ceilings) -> np.ndarray:
    """Target milliseconds of collectives measured at `time_ms`: the share of each time its bus bandwidth
    says was link-bound (busbw over `best_busbw_gbps`, the best of its table) scales with the link bandwidth, the rest
    (latency) stays."""
    time_ms = np.asarray(time_ms, dtype=float)
    bound = time_ms * np.clip(np.asarray(busbw_gbps, dtype=float) / best_busbw_gbps, 0.0, 1.0)
    return bound * (source.link_bytes_per_s / target.link_bytes_per_s) + (time_ms - bound)


def _rescale_rows(frame: pd.DataFrame, new_ms: np.ndarray) -> pd.DataFrame:
    """`frame` with time_ms set to `new_ms`, p10/p90 scaled alike, achieved TFLOP/s and TB/s recomputed."""
    out = frame.copy()
    factor = new_ms / frame["time_ms"].to_numpy(dtype=float)
    for column in ("time_ms", "p10_ms", "p90_ms"):
        out[column] = frame[column].to_numpy(dtype=float) * factor
    seconds = new_ms * 1e-3
    if "tflops" in out.columns:
        out["tflops"] = frame["flops"].to_numpy(dtype=float) / seconds / 1e12
        out["tbps"] = frame["bytes"].to_numpy(dtype=float) / seconds / 1e12
    return out


def transfer_ops(frame: pd.DataFrame, source: Ceilings, target: Ceilings) -> pd.DataFrame:
    """ops.csv rows measured on the source, as the target would time them."""
    return _rescale_rows(frame, transfer_ms(frame["time_ms"], frame["flops"], frame["bytes"], source, target))


def transfer_attention(frame: pd.DataFrame, source: Ceilings, target: Ceilings) -> pd.DataFrame:
    """attention.csv rows measured on the source, as the target's attention kernel would time them."""
    return _rescale_rows(frame, transfer_ms(frame["time_ms"], frame["flops"], frame["bytes"], source, target,
                                            compute="attention"))


def transfer_comm(frame: pd.DataFrame, source: Ceilings, target: Ceilings) -> pd.DataFrame:
    """comm.csv rows measured on the source's link, as the target's link would time them."""
    best = frame.groupby(["op", "world_size"])["busbw_gbps"].transform("max").to_numpy(dtype=float)
    new_ms = transfer_comm_ms(frame["time_ms"], frame["busbw_gbps"], best, source, target)
    out = _rescale_rows(frame, new_ms)
    factor = frame["time_ms"].to_numpy(dtype=float) / new_ms
    for column in ("algbw_gbps", "busbw_gbps"):
        out[column] = frame[column].to_numpy(dtype=float) * factor
    return out


def transfer_meta(meta: dict, source_hw: HardwareConfig, target_hw: HardwareConfig, target: Ceilings) -> dict:
    """meta.json of a transferred profile: the source's, with the target's GPU facts and ceilings, and where
    its times come from."""
    out = dict(meta)
    out["gpu"] = target_hw.profile
    out["environment"] = {"gpu_name": target_hw.gpu_name, "gpu_multiprocessors": int(target_hw.num_sms),
                          "gpu_l2_bytes": int(target_hw.l2_cache_mib * 2**20)}
    out["peaks"] = {"matmul_tflops": target.matmul_flops_per_s / 1e12, "memory_tbps": target.bytes_per_s / 1e12,
                    "how": f"datasheet peaks x the fractions {source_hw.name}'s profile reached"}
    out["transferred_from"] = {
        "gpu": source_hw.name, "profile": source_hw.profile,
        "attention_kernel": target_hw.attention_kernel, "attention_efficiency": target_hw.attention_efficiency,
        "how": "simulator/runtime/transfer.py (docs/gpu_transfer.md)"}
    out.pop("history", None)
    return out


def transfer_calibration(fitted: FittedRuntime, source_fit: FittedRuntime, source: Ceilings,
                         target: Ceilings) -> FittedRuntime:
    """`fitted` (a fit to transferred tables) calibrated as the source GPU's fit of the same model is: the
    same scale (kernels waiting for each other in a forward pass), the per-layer time of kernels no table
    holds (KV-cache writes: memory-bound) scaled by the memory ceilings."""
    return dataclasses.replace(
        fitted, calibration_scale=source_fit.calibration_scale,
        calibration_layer_ms=source_fit.calibration_layer_ms * source.bytes_per_s / target.bytes_per_s,
        calibration_rows=source_fit.calibration_rows,
        calibration_source=f"transferred from {source.name} ({source_fit.calibration_source or 'none'})",
        transferred_from=source.name)


# ---------------------------------------------------------------------- I/O


def attention_bytes_per_sm_s(attention: pd.DataFrame, hardware: HardwareConfig) -> float:
    """Bytes/s per SM of the fastest-streaming launches of a measured attention table (its 99th
    percentile of achieved TB/s, over the GPU's SMs)."""
    return float(np.percentile(attention["tbps"].to_numpy(dtype=float), 99)) * 1e12 / hardware.num_sms


def transfer_pair(source_hw: HardwareConfig, target_hw: HardwareConfig, source_meta: dict,
                  source_attention: pd.DataFrame | None = None) -> tuple[Ceilings, Ceilings]:
    """(source, target) ceilings, both GPUs' facts checked; the target reaches the source's fractions of
    its peaks, and its attention kernel the source's KV bytes/s per SM (where `source_attention`, the
    source's measured attention table, is given)."""
    check_facts(target_hw, "target")
    check_facts(source_hw, "source")
    fractions = reached_fractions(source_hw, source_meta)
    per_sm = None if source_attention is None else attention_bytes_per_sm_s(source_attention, source_hw)
    if per_sm is not None and not per_sm > 0:  # a table without byte counts says nothing about streaming
        per_sm = None
    return ceilings(source_hw, *fractions, per_sm), ceilings(target_hw, *fractions, per_sm)


def write_transferred_tables(source_dir: Path, source_comm_dir: Path, out_dir: Path, out_comm_dir: Path,
                             source_hw: HardwareConfig, target_hw: HardwareConfig) -> None:
    """Write ops.csv, attention.csv and meta.json of `source_dir` (and comm.csv, where the source has one)
    transferred to `target_hw` into `out_dir` (`out_comm_dir`); files whose content is unchanged are left
    alone, so their digests (the fit cache key) stay."""
    import pandas as pd

    from profiler.schema import table_path
    from simulator.runtime.tables import read_meta

    meta = read_meta(source_dir / "meta.json")
    # The source tables may be committed compressed (ops.csv.gz); the transferred ones are a plain cache.
    frames = {name: pd.read_csv(table_path(source_dir, name)) for name in ("ops.csv", "attention.csv")}
    source, target = transfer_pair(source_hw, target_hw, meta, frames["attention.csv"])
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out_dir / "meta.json", json.dumps(transfer_meta(meta, source_hw, target_hw, target), indent=1))
    for name, transfer in (("ops.csv", transfer_ops), ("attention.csv", transfer_attention)):
        _write_if_changed(out_dir / name, transfer(frames[name], source, target).to_csv(index=False,
                                                                                       float_format="%.6g"))
    if (source_comm_dir / "comm.csv").exists():
        out_comm_dir.mkdir(parents=True, exist_ok=True)
        frame = pd.read_csv(source_comm_dir / "comm.csv")
        _write_if_changed(out_comm_dir / "comm.csv", transfer_comm(frame, source, target).to_csv(index=False,
                                                                                                 float_format="%.6g"))


def _write_if_changed(path: Path, text: str) -> None:
    from simulator.atomic import write_atomically

    if path.exists() and path.read_text() == text:
        return
    write_atomically(path, lambda temp: temp.write_text(text))


def validation_words(source_name: str, summary_path: Path) -> str:
    """How well transferring from `source_name` predicted a measured GPU, in words, from the summary
    bench/gpu_transfer.py writes ("" when it holds no pair with that source)."""
    try:
        summary = json.loads(Path(summary_path).read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    pairs = [(pair, entry) for pair, entry in summary.items()
             if pair.split(" -> ")[0] == source_name and entry.get("whole_forward_median_pct") is not None]
    return "; ".join(f"validated {pair}: whole forwards within {entry['whole_forward_median_pct']:.1f} % median, "
                     f"{entry['whole_forward_p95_pct']:.1f} % P95 (worst model)" for pair, entry in pairs)
