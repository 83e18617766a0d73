"""The header of a run's terminal report: what was simulated, an aspect a line.

    model       yi-34b on 2 h100 GPUs: 1 replica of 2 GPUs (tp=2, pp=1)
    policy      sarathi (max_batch_size=128, chunk_size=512)
    workload    conversation: trace splitwise_conv.csv
    predictor   runtime model fitted to h100 profiles; engine vllm_v1: vLLM V1 (2026 releases) on Hopper
    KV cache    20,565 blocks of 16 tokens per replica

Read from a summary's `setup` block (simulator/run.py, simulator/disagg/run.py).
"""
from __future__ import annotations


def setup_lines(setup: dict) -> list[str]:
    """What ran, an aspect a line: the GPUs in total and per replica, the policy, the workload and the
    file it reads, the predictor and engine in words, the KV cache, and what building the predictor
    warned about (once, in one line each)."""
    params = ", ".join(f"{k}={v}" for k, v in setup["policy_params"].items())
    workload = setup["workload"] + (f": {setup['workload_source']}" if setup.get("workload_source") else "")
    blocks = f"{setup['kv_blocks_per_engine']:,} blocks of {setup['kv_block_size']} tokens per replica"
    if setup.get("disagg"):
        blocks = (f"{setup['disagg']['prefill']['kv_blocks_per_engine']:,} (prefill) / "
                  f"{setup['disagg']['decode']['kv_blocks_per_engine']:,} (decode) blocks of "
                  f"{setup['kv_block_size']} tokens per replica")
    return [f"model       {setup['model']} on {gpus_text(setup)}",
            f"policy      {setup['policy']}" + (f" ({params})" if params else ""),
            f"workload    {workload}",
            f"predictor   {setup.get('predictor_description') or setup['predictor']}",
            f"KV cache    {blocks}",
            *(f"note        {note}" for note in setup.get("notes") or [])]


def gpus_text(setup: dict) -> str:
    """ "2 h100 GPUs: 1 replica of 2 GPUs (tp=2, pp=1)": GPUs in total, then per replica (per pool for a
    prefill/decode-pool run). tp=2 on "1 x h100" read as one GPU."""
    def replicas(count: int, tp: int, pp: int, hardware: str = "") -> str:
        return f"{_plural(count, 'replica')} of {_plural(tp * pp, (hardware + ' GPU').strip())} (tp={tp}, pp={pp})"

    if setup.get("disagg"):
        pools = [f"{name} pool {replicas(pool['num_replicas'], pool['tp'], pool['pp'], pool['hardware'])}"
                 for name, pool in ((n, setup["disagg"][n]) for n in ("prefill", "decode"))]
        return f"{_plural(setup['num_gpus'], 'GPU')}: {', '.join(pools)}"
    tp, pp, count = setup["tp"], setup["pp"], setup["num_replicas"]
    router = f", router {setup['router']}" if count > 1 and setup.get("router") else ""
    return f"{_plural(count * tp * pp, setup['hardware'] + ' GPU')}: {replicas(count, tp, pp)}{router}"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
