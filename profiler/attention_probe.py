"""Which attention kernels can launch a mixed batch (prefill chunks + decodes) on this GPU, and at what cost.

A FlashAttention-2 varlen launch whose longest query is over one token walks every query head over its
sequence's KV separately, so decodes riding in a launch with a prefill chunk read their KV once per query
head instead of once per KV head (4x the bytes for 32 query heads over 8 KV heads). Engines avoid it by
splitting the launch (vLLM V0 + FA2, FlashInfer) or by a kernel that packs grouped-query heads in varlen
launches (FlashAttention-3's pack_gqa). This probe answers, for the runtime model's `packed_gqa` mode,
whether this torch build exposes such a kernel, and times the candidates on the batches where it matters:

  fused_varlen   torch's FA2 varlen kernel, one launch (the profiles' attention.csv)
  split          the same kernel, one launch for the chunks and one for the decodes
  fa3            FlashAttention-3 through torch.nn.attention's implementation switch (needs flash_attn_interface)
  flex           FlexAttention over the packed batch with a document + bottom-right causal block mask and
                 enable_gqa=True (compiled; correctness checked against the float32 reference)
  cudnn_decode   cuDNN SDPA with enable_gqa on the decodes alone, padded to one length (cuDNN has no
                 varlen mixed launch with bottom-right causal masks in torch's API)

Every candidate is checked against profiler.attention.reference_attention before it is timed; a candidate
that fails or is missing is reported with its error. Output: one JSON file.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from profiler.attention import attention as varlen_attention
from profiler.attention import (
    chunks_first,
    make_batch,
    make_split_batch,
    reference_attention,
    relative_error,
    split_attention,
)
from profiler.env import environment
from profiler.timing import TimingSettings, time_call

# (name, composition) of one layer: a chunk with decodes (the example), chunks over prefixes, and a
# decode-only launch for reference. Llama-3-8B shapes: 32 query heads, 8 KV heads, head_dim 128.
PROBE_BATCHES = [
    ("chunk256_128dec_ctx2048", [(256, 0)] + [(1, 2048)] * 128),
    ("chunk512p1024_64dec_ctx4096", [(512, 1024)] + [(1, 4096)] * 64),
    ("chunk2048_32dec_ctx1024", [(2048, 0)] + [(1, 1024)] * 32),
    ("chunk128p3000_16dec_ctx512", [(128, 3000)] + [(1, 512)] * 16),
    ("decodes_only_128_ctx2048", [(1, 2048)] * 128),
]
FLEX_TIMED = ("chunk256_128dec_ctx2048", "chunk512p1024_64dec_ctx4096")
CHECK_BATCH = [(37, 20), (1, 50), (1, 300), (130, 0), (1, 7)]


def _inputs(composition, hq, hk, d, device, dtype, seed):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    batch = make_batch(composition, device)

    def rand(rows, heads):
        return torch.randn((rows, heads, d), generator=gen, device=device, dtype=dtype)

    return batch, rand(batch.total_q, hq), rand(batch.total_k, hk), rand(batch.total_k, hk)


def _flex_runner(composition, device):
    """A callable (q, k, v, scale) -> out over the packed batch with FlexAttention, or raises."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    doc_q, doc_k, pos_q, pos_k = [], [], [], []
    for i, (q, p) in enumerate(composition):
        doc_q += [i] * q
        pos_q += range(p, p + q)
        doc_k += [i] * (p + q)
        pos_k += range(p + q)

    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    dq, dk, pq, pk = ints(doc_q), ints(doc_k), ints(pos_q), ints(pos_k)

    def mask_mod(b, h, q_idx, kv_idx):
        return (dq[q_idx] == dk[kv_idx]) & (pk[kv_idx] <= pq[q_idx])

    block_mask = create_block_mask(mask_mod, None, None, len(doc_q), len(doc_k), device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v, scale):
        out = compiled(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                       v.transpose(0, 1).unsqueeze(0), block_mask=block_mask, scale=scale, enable_gqa=True)
        return out.squeeze(0).transpose(0, 1)

    return run


def _cudnn_decode_runner(composition):
    """cuDNN SDPA over the decodes of `composition`, padded to the longest context (no mask needed: a
    decode sees its whole context; padded keys are excluded by a length mask per sequence)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    contexts = [p + 1 for q, p in composition if q == 1]
    longest = max(contexts)

    def run(q_dec, k_pad, v_pad, mask, scale):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q_dec, k_pad, v_pad, attn_mask=mask, scale=scale,
                                                  enable_gqa=True)

    return run, contexts, longest


def _fa3_status() -> dict:
    """Whether torch can switch its flash-attention implementation to FlashAttention-3 here."""
    import torch.nn.attention as attn

    status = {"functions": sorted(n for n in dir(attn) if "flash" in n.lower() or "impl" in n.lower())}
    lister = getattr(attn, "list_flash_attention_impls", None)
    if lister is not None:
        try:
            status["listed_impls"] = [str(x) for x in lister()]
        except Exception as e:  # noqa: BLE001 - report whatever this build does
            status["list_error"] = f"{type(e).__name__}: {e}"
    for name in ("activate_flash_attention_impl", "set_flash_attention_impl"):
        fn = getattr(attn, name, None)
        if fn is None:
            continue
        try:
            fn("FA3")
            status["activated"] = f"{name}('FA3') succeeded"
        except Exception as e:  # noqa: BLE001
            status["activate_error"] = f"{name}('FA3'): {type(e).__name__}: {e}"[:400]
        break
    return status


def probe(device, out_path: Path, dtype=torch.bfloat16, hq=32, hk=8, d=128, log=print,
          backend: str = "torch_flash", batches=None, flex: bool = True) -> dict:
    """Run every candidate on `batches` (default PROBE_BATCHES); write and return the report. `backend`
    launches the fused and split varlen attention (profiler.attention); flex=False skips FlexAttention."""
    batches = PROBE_BATCHES if batches is None else batches
    started = time.perf_counter()
    scale = d ** -0.5
    settings = TimingSettings()
    report = {"what": __doc__.split("\n\n")[0], "environment": environment(device),
              "shapes": {"q_heads": hq, "kv_heads": hk, "head_dim": d, "dtype": str(dtype)},
              "fa3": _fa3_status(), "checks": {}, "batches": {}}
    if report["fa3"].get("activated"):
        report["fa3"]["note"] = "activated: the fused_varlen timings below then run FlashAttention-3"

    def check(name, fn):
        comp = CHECK_BATCH
        batch, q, k, v = _inputs(comp, hq, hk, d, device, dtype, seed=1)
        try:
            error = relative_error(fn(comp, batch, q, k, v), reference_attention(q, k, v, batch, scale))
            report["checks"][name] = {"max_rel_error": error, "passed": error < 2e-2}
        except Exception as e:  # noqa: BLE001 - a missing kernel is a finding, not a failure
            report["checks"][name] = {"passed": False, "error": f"{type(e).__name__}: {e}"[:600],
                                      "trace": traceback.format_exc()[-1200:]}
        log(f"check {name}: {report['checks'][name]}")
        return report["checks"][name]["passed"]

    def split_fn(comp, batch, q, k, v):
        order = chunks_first(comp)
        ordered = [comp[i] for i in order]
        # Reorder rows so chunks come first, run split, then put rows back in the original order.
        q_rows, k_rows = _row_order(comp, order)
        out = split_attention(backend, q[q_rows], k[k_rows], v[k_rows], make_split_batch(ordered, device), scale)
        back = torch.empty_like(out)
        back[q_rows] = out
        return back

    def save():  # after every step: a time limit cuts the probe short without losing what it measured
        report["seconds"] = time.perf_counter() - started
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    check("fused_varlen", lambda c, b, q, k, v: varlen_attention(backend, q, k, v, b, scale))
    check("split", split_fn)
    save()
    for name, comp in batches:
        row = {}
        batch, q, k, v = _inputs(comp, hq, hk, d, device, dtype, seed=2)
        row["fused_varlen_ms"] = time_call(
            lambda i, q=q, k=k, v=v, batch=batch: varlen_attention(backend, q, k, v, batch, scale), 1, device,
            settings).time_ms
        ordered = [comp[i] for i in chunks_first(comp)]
        split = make_split_batch(ordered, device)
        row["split_ms"] = time_call(lambda i, q=q, k=k, v=v, split=split: split_attention(
            backend, q, k, v, split, scale), 1, device, settings).time_ms
        for part, sub in (("prefill", split.prefill), ("decode", split.decode)):
            if sub is None:
                continue
            rows_q = slice(0, split.prefill_q) if part == "prefill" else slice(split.prefill_q, None)
            rows_k = slice(0, split.prefill_k) if part == "prefill" else slice(split.prefill_k, None)
            row[f"split_{part}_launch_ms"] = time_call(
                lambda i, sub=sub, rq=rows_q, rk=rows_k, q=q, k=k, v=v: varlen_attention(
                    backend, q[rq], k[rk], v[rk], sub, scale),
                1, device, settings).time_ms
        decodes = [(qq, p) for qq, p in comp if qq == 1]
        if decodes:
            try:
                row["cudnn_decode_ms"] = _time_cudnn_decodes(decodes, hq, hk, d, device, dtype, scale, settings)
            except Exception as e:  # noqa: BLE001
                row["cudnn_decode_error"] = f"{type(e).__name__}: {e}"[:400]
        report["batches"][name] = {"composition_summary": _summary(comp), **row}
        log(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in row.items()))
        save()
    # FlexAttention last: every composition compiles anew (20-40 s), so two suffice.
    if flex and check("flex", lambda c, b, q, k, v: _flex_runner(c, device)(q, k, v, scale)):
        for name, comp in batches:
            if name not in FLEX_TIMED:
                continue
            row = report["batches"][name]
            batch, q, k, v = _inputs(comp, hq, hk, d, device, dtype, seed=2)
            try:
                t0 = time.perf_counter()
                run = _flex_runner(comp, device)
                run(q, k, v, scale)
                row["flex_compile_s"] = time.perf_counter() - t0
                row["flex_ms"] = time_call(lambda i, run=run, q=q, k=k, v=v: run(q, k, v, scale), 1, device,
                                           settings).time_ms
            except Exception as e:  # noqa: BLE001 - a kernel that does not run is a finding
                row["flex_error"] = f"{type(e).__name__}: {e}"[:400]
            log(f"{name}: flex {row.get('flex_ms', row.get('flex_error'))}")
            save()
    save()
    return report


def _row_order(composition, order):
    """(q row indices, k row indices) of the packed batch when its sequences are taken in `order`."""
    q_starts, k_starts, qs, ks = [], [], 0, 0
    for q, p in composition:
        q_starts.append(qs)
        k_starts.append(ks)
        qs, ks = qs + q, ks + q + p
    q_rows = [r for i in order for r in range(q_starts[i], q_starts[i] + composition[i][0])]
    k_rows = [r for i in order for r in range(k_starts[i], k_starts[i] + sum(composition[i]))]
    return torch.tensor(q_rows), torch.tensor(k_rows)


def _time_cudnn_decodes(decodes, hq, hk, d, device, dtype, scale, settings) -> float:
    run, contexts, longest = _cudnn_decode_runner(decodes)
    n = len(decodes)
    gen = torch.Generator(device=device)
    gen.manual_seed(3)
    q = torch.randn((n, hq, 1, d), generator=gen, device=device, dtype=dtype)
    k = torch.randn((n, hk, longest, d), generator=gen, device=device, dtype=dtype)
    v = torch.randn((n, hk, longest, d), generator=gen, device=device, dtype=dtype)
    lengths = torch.tensor(contexts, device=device)
    mask = (torch.arange(longest, device=device)[None, :] < lengths[:, None])[:, None, None, :]
    return time_call(lambda i: run(q, k, v, mask, scale), 1, device, settings).time_ms


def _summary(composition) -> str:
    chunks = [(q, p) for q, p in composition if q > 1]
    decodes = [p for q, p in composition if q == 1]
    text = ", ".join(f"chunk {q} over {p}" for q, p in chunks)
    if decodes:
        text += (", " if text else "") + f"{len(decodes)} decodes at contexts {min(decodes)}-{max(decodes)}"
    return text
