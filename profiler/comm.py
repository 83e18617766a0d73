"""NCCL all_reduce and send/recv over the message sizes a TP/PP step produces (one process per GPU).

Message sizes: tokens x hidden x 2 bytes for tokens on the grid's ladder (1..16384) and hidden sizes of the
models (4096, 7168, 8192). all_reduce runs on all ranks; send_recv pairs ranks (0->1, 2->3, ...) as
adjacent pipeline stages do, one direction at a time. Each size is timed as CUDA-graph replays of
`calls` back-to-back collectives (eager back-to-back calls if capture is unavailable), CUDA events on
every rank; a repeat's time is the slowest rank's, reported as median and p10/p90 over repeats.

Run as `servesim-profile comm` (spawns one process per visible GPU) or under torchrun.
NVLink multicast (NVLS) stays off: the device machines require it (docs/profiler.md).
"""
from __future__ import annotations

import datetime
import math
import os
import socket
import subprocess
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from profiler.env import environment
from profiler.grid import token_counts
from profiler.progress import progress
from profiler.schema import COMM_COLUMNS
from profiler.tables import ResumableCsv, comm_key, read_json, write_json
from profiler.timing import summarize

NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
HIDDEN_SIZES = (4096, 7168, 8192)


def message_sizes(hidden_sizes=HIDDEN_SIZES, max_tokens: int = 16384, element_bytes: int = 2) -> list[int]:
    """Distinct message sizes in bytes: tokens x hidden x element_bytes over the token ladder."""
    return sorted({n * h * element_bytes for n in token_counts(max_tokens) for h in hidden_sizes})


def calls_per_replay(size_bytes: int, target_ms: float = 0.5, max_calls: int = 64) -> int:
    """Back-to-back collectives per timed replay, from a rough cost guess (deterministic on every rank, so
    all ranks launch the same sequence)."""
    guess_ms = 0.01 + size_bytes / 100e9 * 1e3
    return int(min(max_calls, max(1, math.ceil(target_ms / guess_ms))))


def bus_bandwidth_factor(op: str, world_size: int) -> float:
    """nccl-tests' busbw = algbw x factor: 2(n-1)/n for all_reduce, 1 for send/recv."""
    return 2 * (world_size - 1) / world_size if op == "all_reduce" else 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_comm(out_dir: Path, gpu: str, ops=("all_reduce", "send_recv"), sizes=None, repeats: int = 10,
             use_graphs: bool = True, command: str = "", world_size: int | None = None,
             device_type: str = "cuda") -> None:
    """Measure and append rows to <out_dir>/<gpu>/comm/comm.csv; skips sizes already present.

    device_type "cuda": NCCL, one process per GPU, bf16 messages. "cpu": gloo between CPU processes with
    float32 messages (a demonstration and the test path; world_size defaults to 2).
    """
    os.environ.update(NO_MULTICAST_ENV)
    sizes = list(sizes or message_sizes())
    args = (str(out_dir), gpu, list(ops), sizes, repeats, use_graphs, command, device_type)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        _worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, *args)
        return
    world = world_size or (torch.cuda.device_count() if device_type == "cuda" else 2)
    if world < 2:
        raise RuntimeError(f"comm needs >= 2 processes (GPUs), found {world}")
    mp.spawn(_worker, args=(world, _free_port(), *args), nprocs=world, join=True)


def _worker(rank, world, port, out_dir, gpu, ops, sizes, repeats, use_graphs, command, device_type):
    os.environ.update(NO_MULTICAST_ENV)
    init = f"tcp://127.0.0.1:{port}" if port else "env://"
    timeout = datetime.timedelta(seconds=180)
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world, device_id=device,
                                timeout=timeout)
    else:
        device, use_graphs = torch.device("cpu"), False
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timeout)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_name = str(dtype).replace("torch.", "")
    started = time.perf_counter()
    check = _check_all_reduce(rank, world, device)
    table = None
    if rank == 0:
        table = ResumableCsv(Path(out_dir) / gpu / "comm" / "comm.csv", COMM_COLUMNS, comm_key)
    todo = [(op, size) for op in ops for size in sizes
            if rank != 0 or (op, world, dtype_name, size) not in table]
    box = [todo]
    dist.broadcast_object_list(box, src=0)  # every rank runs rank 0's list, in the same order
    todo = box[0]
    graphs_ok = _graphs_work(ops, rank, world, device) if use_graphs else {op: False for op in ops}
    seconds_by_op: dict[str, float] = {}
    for op, size in (progress(todo, "comm") if rank == 0 else todo):
        t0 = time.perf_counter()
        per_call = _time_op(op, size, rank, world, device, dtype, repeats, graphs_ok[op])
        samples = torch.tensor(per_call, device=device)
        dist.all_reduce(samples, op=dist.ReduceOp.MAX)  # a step waits for the slowest rank
        seconds_by_op[op] = seconds_by_op.get(op, 0.0) + time.perf_counter() - t0
        if rank == 0:
            stats = summarize(samples.tolist())
            algbw = size / (stats.time_ms * 1e-3) / 1e9
            table.append({"op": op, "world_size": world, "dtype": dtype_name, "bytes": size, **stats.row(),
                          "algbw_gbps": algbw, "busbw_gbps": algbw * bus_bandwidth_factor(op, world)})
    if rank == 0:
        _write_meta(Path(out_dir) / gpu / "comm" / "meta.json", gpu, world, device, check, graphs_ok, repeats,
                    seconds_by_op, time.perf_counter() - started, len(todo), command)
    dist.barrier()
    dist.destroy_process_group()


def _check_all_reduce(rank, world, device) -> dict:
    """All-reduce of rank-dependent values must give the exact sum on every rank."""
    x = torch.arange(1024, device=device, dtype=torch.float32) + rank * 1000.0
    dist.all_reduce(x)
    expected = torch.arange(1024, device=device, dtype=torch.float32) * world + 1000.0 * sum(range(world))
    ok = torch.tensor([float(torch.equal(x, expected))], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() != 1.0:
        raise RuntimeError("NCCL all_reduce gave a wrong sum on some rank")
    return {"all_reduce_sum_exact": True}


def _collective(op, buf, rank, world):
    """One all_reduce, or one send (even rank) / recv (odd rank) between ranks 2i and 2i+1."""
    if op == "all_reduce":
        dist.all_reduce(buf)
        return
    peer = rank + 1 if rank % 2 == 0 else rank - 1
    if peer >= world:
        return  # odd world size: the last rank has no partner
    if rank % 2 == 0:
        dist.send(buf, peer)
    else:
        dist.recv(buf, peer)


def _graphs_work(ops, rank, world, device) -> dict:
    """Per op: whether every rank can capture it in a CUDA graph. Captures first, agrees on the result with
    an eager all_reduce, and replays only if all ranks captured (a lone replay would wait forever)."""
    result = {}
    for op in ops:
        buf = torch.randn(4096, device=device, dtype=torch.bfloat16)
        _collective(op, buf, rank, world)
        torch.cuda.synchronize()
        graph, ok = torch.cuda.CUDAGraph(), 1.0
        try:
            with torch.cuda.graph(graph):
                _collective(op, buf, rank, world)
        except RuntimeError:
            ok = 0.0
        flag = torch.tensor([ok], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        result[op] = flag.item() == 1.0
        if result[op]:
            graph.replay()
            torch.cuda.synchronize()
    return result


def _time_op(op, size, rank, world, device, dtype, repeats, graphs_ok) -> list[float]:
    """Per-call ms of `repeats` replays of calls_per_replay(size) back-to-back collectives."""
    element = torch.tensor([], dtype=dtype).element_size()
    buf = torch.randn(max(1, size // element), device=device, dtype=dtype)
    calls = calls_per_replay(size)

    def run_all():
        for _ in range(calls):
            _collective(op, buf, rank, world)

    run_all()  # warm-up (and NCCL's lazy connection setup for this pattern)
    runner = run_all
    if graphs_ok:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_all()
        runner = graph.replay
    runner()
    dist.barrier()
    if device.type != "cuda":
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner()
            samples.append((time.perf_counter() - start) * 1e3 / calls)
        return samples
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for s, e in events:
        s.record()
        runner()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / calls for s, e in events]


def _write_meta(path, gpu, world, device, check, graphs_ok, repeats, seconds_by_op, seconds, measured, command):
    old = read_json(path)
    env = environment(device)
    try:
        topo = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20,
                              check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        topo = f"unavailable: {e}"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None
    write_json(path, {
        "what": "NCCL all_reduce and send_recv through torch.distributed, one process per GPU; see docs/profiler.md",
        "gpu": gpu, "world_size": world, "environment": env, "nccl_version": nccl,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "nvidia_smi_topo": topo, "env": {k: os.environ.get(k) for k in NO_MULTICAST_ENV},
        "check": check,
        "timing": {"cuda_graphs_by_op": graphs_ok, "repeats": repeats,
                   "method": "replays of back-to-back collectives (calls_per_replay by size), CUDA events on every "
                             "rank, the slowest rank per repeat, median and p10/p90 over repeats",
                   "send_recv": "ranks 2i -> 2i+1, one direction (a pipeline stage handing activations on)"},
        "bytes": "message size per GPU: tokens x hidden x 2 for tokens 1..16384, hidden 4096/7168/8192",
        "runs": old.get("runs", []) + [{"command": command, "date_utc": env["date_utc"], "seconds": seconds,
                                        "seconds_by_op": seconds_by_op, "sizes_measured": measured}],
    })
