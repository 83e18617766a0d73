"""What disaggregated serving adds to the metrics: per-request hand-off columns and per-pool summaries.

Request columns (seconds; NaN for requests that never moved: one output token, or rejected):
  prefill_replica_id, decode_replica_id   -1 where none
  decode_wait_s     from asking the decode pool for KV room until its blocks were reserved (back-pressure)
  kv_transfer_s     from the reservation until the KV was on the decode replica: link latency, the bytes
                    at the link's fair share, and (layer streaming) the wait for the prefill's last layer
  kv_arrived_s      when the decode replica's scheduler got the request
  kv_transfer_bytes bytes moved (0 where none)
Summary block `disaggregation`: per pool its GPUs, iterations, mean/max batch size, busy fraction
(stage-iteration time over replicas x stages x the run's span) and mean KV blocks in use; per link its
busy fraction, bytes, transfers and peak concurrency; decode_wait_s and kv_transfer_s statistics.
"""
from __future__ import annotations

import numpy as np

from simulator.disagg.cluster import HandoffRecords
from simulator.metrics import IterationRecords, _round, latency_stats
from simulator.request import NOT_YET


def _seconds(ns: np.ndarray) -> np.ndarray:
    return np.where(ns == NOT_YET, np.nan, ns / 1e9)


def handoff_columns(handoff: HandoffRecords) -> dict[str, np.ndarray]:
    """The per-request columns above, for RequestRecords.extra_columns."""
    requested = _seconds(handoff.handoff_ns)
    granted = _seconds(handoff.kv_granted_ns)
    arrived = _seconds(handoff.transfer_done_ns)
    return {
        "prefill_replica_id": handoff.prefill_replica_id.copy(),
        "decode_replica_id": handoff.decode_replica_id.copy(),
        "decode_wait_s": granted - requested,
        "kv_transfer_s": arrived - granted,
        "kv_arrived_s": arrived,
        "kv_transfer_bytes": handoff.kv_bytes.copy(),
    }


def pool_summary(iters: IterationRecords, first_replica: int, num_replicas: int, num_stages: int,
                 gpus_per_replica: int, span_s: float) -> dict:
    """Iteration statistics of replicas first_replica .. first_replica + num_replicas - 1."""
    replica = np.asarray(iters.replica_id)
    mine = (replica >= first_replica) & (replica < first_replica + num_replicas)
    first_stage = mine & (np.asarray(iters.stage) == 0)
    batch = np.asarray(iters.batch_size)[first_stage]
    busy_s = float(np.asarray(iters.duration_s)[mine].sum())
    return {
        "num_replicas": num_replicas,
        "num_gpus": num_replicas * gpus_per_replica,
        "num_iterations": int(first_stage.sum()),
        "batch_size_mean": _round(batch.mean()) if len(batch) else None,
        "batch_size_max": int(batch.max()) if len(batch) else None,
        "busy_fraction": _round(busy_s / (num_replicas * num_stages * span_s)) if span_s > 0 else None,
        "kv_blocks_used_mean": _round(np.asarray(iters.kv_blocks_used)[first_stage].mean()) if len(batch) else None,
    }


def disaggregation_summary(out, columns: dict) -> dict:
    """The `disaggregation` block of the summary of one DisaggregatedOutput (`columns`: handoff_columns)."""
    arrived = np.asarray(out.records.arrived_s)
    span_s = out.simulated_s - (float(arrived.min()) if len(arrived) else 0.0)
    prefill, decode = out.pools["prefill"], out.pools["decode"]
    links = out.links
    return {
        "prefill": pool_summary(out.iterations, 0, prefill.num_replicas, prefill.predictor.num_stages,
                                prefill.gpus_per_replica, span_s),
        "decode": pool_summary(out.iterations, prefill.num_replicas, decode.num_replicas,
                               decode.predictor.num_stages, decode.gpus_per_replica, span_s),
        "link": {
            "busy_fraction": _round(sum(link.busy_ns for link in links) / 1e9 / (len(links) * span_s))
            if span_s > 0 else None,
            "bytes": int(sum(link.bytes_sent for link in links)),
            "transfers": int(sum(link.transfers for link in links)),
            "max_concurrent": int(max(link.max_concurrent for link in links)),
        },
        "requests_moved": int((out.handoff.transfer_done_ns != NOT_YET).sum()),
        "decode_wait_s": latency_stats(columns["decode_wait_s"]),
        "kv_transfer_s": latency_stats(columns["kv_transfer_s"]),
    }


def format_disaggregation(block: dict) -> str:
    """Terminal lines for the `disaggregation` summary block (times in ms)."""
    def ms(stats, key):
        return "-" if stats[key] is None else f"{stats[key] * 1e3:,.2f}"

    def pool(name):
        p = block[name]
        busy = "-" if p["busy_fraction"] is None else f"{p['busy_fraction']:.1%}"
        mean = "-" if p["batch_size_mean"] is None else f"{p['batch_size_mean']:.1f}"
        return (f"{name + ' pool':<13}{p['num_replicas']} replicas ({p['num_gpus']} GPUs), busy {busy}, "
                f"{p['num_iterations']:,} iterations, mean batch {mean}, max {p['batch_size_max']}")

    link = block["link"]
    busy = "-" if link["busy_fraction"] is None else f"{link['busy_fraction']:.1%}"
    wait, transfer = block["decode_wait_s"], block["kv_transfer_s"]
    return "\n".join([
        pool("prefill"), pool("decode"),
        (f"{'KV link':<13}{link['transfers']:,} transfers, {link['bytes'] / 1e9:,.2f} GB, busy {busy}, "
         f"at most {link['max_concurrent']} at once"),
        f"{'KV transfer':<13}mean {ms(transfer, 'mean')} ms, p99 {ms(transfer, 'p99')} ms, max {ms(transfer, 'max')} ms",
        f"{'decode wait':<13}mean {ms(wait, 'mean')} ms, p99 {ms(wait, 'p99')} ms, max {ms(wait, 'max')} ms",
    ])
