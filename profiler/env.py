"""Facts about the machine a profile was measured on, and its measured peaks (the sanity ceilings)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys

import torch

from profiler.timing import TimingSettings, time_call


def environment(device: torch.device) -> dict:
    """GPU (or CPU) name and memory, driver, CUDA, torch and Python versions, UTC date."""
    facts = {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_type": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update({
            "gpu_name": props.name,
            "gpu_memory_bytes": int(props.total_memory),
            "gpu_multiprocessors": int(props.multi_processor_count),
            "gpu_l2_bytes": int(getattr(props, "L2_cache_size", 0)),
            "nvidia_smi": _nvidia_smi(),
        })
    else:
        facts.update({"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                      "torch_threads": torch.get_num_threads()})
    return facts


def _nvidia_smi() -> dict:
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    if not out:
        return {"error": "nvidia-smi printed nothing"}
    return dict(zip(query.split(","), [v.strip() for v in out[0].split(",")]))


def gpu_label(device: torch.device) -> str:
    """Short directory name for the device: 'h100', 'h200', 'a100', else the sanitized name; 'cpu'."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_properties(device).name
    for label in ("h100", "h200", "a100", "l40s", "b200"):
        if label in name.lower():
            return label
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def memory_bytes(device: torch.device) -> int:
    """Device memory (GPU) or physical memory (CPU) in bytes."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def l2_bytes(device: torch.device) -> int:
    """The GPU's L2 size; 0 on a CPU (no input rotation there)."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


def measure_peaks(device: torch.device, dtype=torch.bfloat16) -> dict:
    """Measured ceilings: a large random matmul (TFLOP/s) and a large device-to-device copy (TB/s,
    bytes read plus bytes written). Rows above these are listed in meta.json."""
    size, copy_bytes = (8192, 1 << 30) if device.type == "cuda" else (256, 16 << 20)
    gen = torch.Generator(device=device)
    gen.manual_seed(1)
    a = torch.randn((size, size), device=device, dtype=dtype, generator=gen)
    b = torch.randn((size, size), device=device, dtype=dtype, generator=gen)
    settings = TimingSettings(repeats=10, target_replay_ms=0.0, max_calls_per_replay=1)
    mm = time_call(lambda i: a @ b, 1, device, settings)
    src = torch.randn((copy_bytes // 2,), device=device, dtype=torch.bfloat16, generator=gen)
    dst = torch.empty_like(src)
    cp = time_call(lambda i: dst.copy_(src), 1, device, settings)
    # Read-only streaming (a reduction) runs faster than a copy on HBM; GEMVs of decode steps do this.
    big = torch.randn((2 * copy_bytes // 2,), device=device, dtype=torch.bfloat16, generator=gen)
    rd = time_call(lambda i: big.sum(dtype=torch.float32), 1, device, settings)
    copy_tbps = 2 * copy_bytes / (cp.time_ms * 1e-3) / 1e12
    read_tbps = 2 * copy_bytes / (rd.time_ms * 1e-3) / 1e12
    return {
        "matmul_tflops": 2 * size ** 3 / (mm.time_ms * 1e-3) / 1e12,
        "matmul_shape": [size, size, size],
        "copy_tbps": copy_tbps,
        "copy_bytes": copy_bytes,
        "read_tbps": read_tbps,
        "read_bytes": 2 * copy_bytes,
        "memory_tbps": max(copy_tbps, read_tbps),
        "how": ("median of 10 timed runs on random data; copy counts bytes read plus bytes written; read is a "
                "float32-accumulated sum over bf16; memory_tbps (the ceiling rows are checked against) is the "
                "larger of the two"),
    }
