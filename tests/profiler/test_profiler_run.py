"""Whole profiler runs on the CPU path: schema, dedupe across models, resume after an interruption."""
import json

import pandas as pd
import pytest
import torch

import profiler.model_profile as mp
from profiler.cli import load_model, main
from profiler.schema import (
    ATTENTION_COLUMNS,
    ITERATION_COLUMNS,
    OPS_COLUMNS,
    SPLIT_ITERATION_COLUMNS,
    table_path,
)
from profiler.tables import ResumableCsv
from profiler.timing import TimingSettings

OPS = ["rmsnorm", "qkv_proj", "lm_head"]


def request(models, out_dir, **kw):
    return mp.ProfileRequest(models=models, tps=[1, 2], out_dir=out_dir, gpu="cpu", device=torch.device("cpu"),
                             dtype=torch.float32, ops=OPS, tiny=True, max_tokens=8,
                             settings=TimingSettings(warmup_calls=0, repeats=2, use_graphs=False),
                             repeat_sample=3, **kw)


def read(out_dir, model):
    d = out_dir / "cpu" / model
    return (pd.read_csv(table_path(d, "ops.csv")), pd.read_csv(table_path(d, "attention.csv")),
            json.loads((d / "meta.json").read_text()))


def files(out_dir, model):
    return sorted(p.name for p in (out_dir / "cpu" / model).iterdir())


def test_tables_follow_the_schema(tiny_model, tmp_path):
    mp.run_profile(request([tiny_model], tmp_path), log=lambda *_: None)
    assert files(tmp_path, "tiny-llama") == ["attention.csv.gz", "meta.json", "ops.csv.gz"]
    ops, att, meta = read(tmp_path, "tiny-llama")
    assert list(ops.columns) == OPS_COLUMNS and list(att.columns) == ATTENTION_COLUMNS
    assert len(ops) == 2 * 3 * 8                              # tp x ops x token counts 1..8
    assert (ops.time_ms > 0).all() and (ops.p10_ms <= ops.time_ms).all() and (ops.time_ms <= ops.p90_ms).all()
    qkv = ops[(ops.op == "qkv_proj") & (ops.tp == 1) & (ops.num_tokens == 4)].iloc[0]
    assert qkv.flops == 2 * 4 * 64 * (4 + 2 * 2) * 16          # 2 n k m for the tp1 shard
    assert qkv.tflops == pytest.approx(qkv.flops / (qkv.time_ms * 1e-3) / 1e12, rel=1e-3)
    assert set(att.kind) == {"prefill", "decode", "mixed"} and set(att.backend) == {"sdpa_masked"}
    for _, r in att.iterrows():
        comp = json.loads(r.composition)
        assert r.q_tokens_total == sum(q for q, _ in comp) and r.kv_tokens_total == sum(p for _, p in comp)
        assert r.num_decodes + r.num_prefills == r.batch_size == len(comp)
    assert set(att.num_q_heads[att.tp == 2]) == {2}
    assert meta["complete"] and meta["attention_backend"] == "sdpa_masked"
    assert meta["runs"][-1]["repeatability"]["points"] == 3
    assert set(meta["runs"][-1]["seconds_by_family"]) >= set(OPS) | {"attention_decode"}
    assert meta["peaks"]["matmul_tflops"] > 0 and meta["peaks"]["memory_tbps"] > 0


def test_second_model_shares_every_non_vocab_row(tiny_yaml, tmp_path):
    first, second = (load_model(str(p)) for p in tiny_yaml)
    mp.run_profile(request([first, second], tmp_path), log=lambda *_: None)
    ops1, att1, _ = read(tmp_path, "tiny-llama")
    ops2, att2, meta2 = read(tmp_path, "tiny-other-vocab")
    shared = ops2[ops2.op != "lm_head"].merge(ops1, on=["tp", "op", "num_tokens"], suffixes=("", "_1"))
    assert len(shared) == len(ops2[ops2.op != "lm_head"]) and (shared.time_ms == shared.time_ms_1).all()
    assert att2.time_ms.tolist() == att1.time_ms.tolist()       # same heads and context: all shared
    shared_groups = meta2["runs"][-1]["rows_shared_from"]["tiny-llama"]
    assert "lm_head@tp1" not in shared_groups and shared_groups["rmsnorm@tp2"] == 8
    assert meta2["runs"][-1]["rows_measured_for_this_model"] == 2 * 8   # only its own lm_head rows


@pytest.mark.parametrize("stop", ["interrupted", "killed"])
def test_interrupted_run_resumes_to_the_same_table(tiny_model, tmp_path, monkeypatch, stop):
    """An interrupted run packs its tables (.gz) as it stops; one killed outright leaves them plain. Either
    way the next run resumes from the rows written and ends with the whole tables gzipped."""
    reference_dir, resumed_dir = tmp_path / "ref", tmp_path / "resumed"
    mp.run_profile(request([tiny_model], reference_dir), log=lambda *_: None)

    real = mp.measure_point
    calls = {"n": 0}

    def dies_after_20(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(mp, "measure_point", dies_after_20)
    if stop == "killed":  # no exit code runs: the tables stay as they were being appended to
        monkeypatch.setattr(ResumableCsv, "close", lambda self: None)
    with pytest.raises(KeyboardInterrupt):
        mp.run_profile(request([tiny_model], resumed_dir), log=lambda *_: None)
    suffix = ".gz" if stop == "interrupted" else ""
    assert files(resumed_dir, "tiny-llama") == [f"attention.csv{suffix}", f"ops.csv{suffix}"]
    partial_ops = pd.read_csv(resumed_dir / "cpu" / "tiny-llama" / f"ops.csv{suffix}")
    assert 0 < len(partial_ops) < 36
    monkeypatch.undo()  # measure_point and close as they were

    counted = {"n": 0}

    def counting(*args, **kw):
        counted["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(mp, "measure_point", counting)
    mp.run_profile(request([tiny_model], resumed_dir), log=lambda *_: None)
    assert files(resumed_dir, "tiny-llama") == ["attention.csv.gz", "meta.json", "ops.csv.gz"]
    ops_ref, att_ref, _ = read(reference_dir, "tiny-llama")
    ops, att, meta = read(resumed_dir, "tiny-llama")
    key = ["tp", "op", "num_tokens"]
    assert not ops.duplicated(key).any() and not att.duplicated(["tp", "composition"]).any()
    assert sorted(map(tuple, ops[key].values.tolist())) == sorted(map(tuple, ops_ref[key].values.tolist()))
    assert sorted(att.composition + att.tp.astype(str)) == sorted(att_ref.composition + att_ref.tp.astype(str))
    # Finished rows were kept as they were, and not measured again (3 extra calls: the repeatability sample).
    assert ops.iloc[: len(partial_ops)].equals(partial_ops)
    distinct_jobs = len(mp.plan_jobs(*_tables_and_grid(tiny_model, resumed_dir)))
    assert counted["n"] == distinct_jobs - 20 + 3
    assert meta["complete"] and len(meta["runs"]) == 1           # the interrupted run never wrote meta


def _tables_and_grid(model, out_dir):
    """Rebuild the job plan the way run_profile does (to count distinct measurements)."""
    from profiler.env import memory_bytes
    from profiler.grid import attention_grid, kv_capacity_tokens, op_grid
    mem = memory_bytes(torch.device("cpu"))
    t = mp.ModelTables(model, out_dir, None, None)
    points = op_grid(model, [1, 2], OPS, 8)
    for tp in [1, 2]:
        per_token = 2 * model.kv_heads_per_gpu(tp) * model.head_dim * 4
        cap = kv_capacity_tokens(model, tp, mem, pp=min(model.num_layers, max(1, 8 // tp)))
        points += attention_grid(model, tp, cap, int(0.25 * mem // per_token), tiny=True)
    return [t], {model.name: points}


def test_cli_profile_and_iterations_on_cpu(tiny_yaml, tmp_path):
    path, _ = tiny_yaml
    rc = main(["profile", "--device", "cpu", "--dtype", "float32", "--models", str(path), "--tiny",
               "--ops", "act", "--no-attention", "--max-tokens", "4", "--repeats", "2", "--repeat-sample", "2",
               "--out", str(tmp_path / "p")])
    assert rc == 0
    meta = json.loads((tmp_path / "p" / "cpu" / "tiny-llama" / "meta.json").read_text())
    assert meta["runs"][0]["command"].startswith("servesim-profile profile --device cpu")
    assert meta["rows"] == {"ops": 4, "attention": 0}
    rc = main(["iterations", "--device", "cpu", "--dtype", "float32", "--models", str(path), "--count", "3",
               "--max-batch-tokens", "64", "--out", str(tmp_path / "v")])
    assert rc == 0
    it = pd.read_csv(tmp_path / "v" / "cpu" / "tiny-llama" / "iterations.csv")
    assert list(it.columns) == ITERATION_COLUMNS and len(it) == 3
    assert (it.q_tokens_total <= 64).all() and (it.time_ms > 0).all() and (it.num_layers == 2).all()
    # The same compositions with split attention launches, and timed as piecewise graph pieces too.
    rc = main(["iterations", "--device", "cpu", "--dtype", "float32", "--models", str(path), "--count", "3",
               "--max-batch-tokens", "64", "--attention-launch", "split", "--piecewise-max-tokens", "16",
               "--out", str(tmp_path / "v")])
    assert rc == 0
    split = pd.read_csv(tmp_path / "v" / "cpu" / "tiny-llama" / "iterations_split.csv")
    assert list(split.columns) == SPLIT_ITERATION_COLUMNS and split.composition.tolist() == it.composition.tolist()
    small = split.q_tokens_total <= 16
    assert (split.piecewise_time_ms[small] > 0).all() and split.piecewise_time_ms[~small].isna().all()
    assert (split.piecewise_tokens[small] >= split.q_tokens_total[small]).all()
    meta = json.loads((tmp_path / "v" / "cpu" / "tiny-llama" / "meta_split.json").read_text())
    assert meta["attention_launch"] == "split" and "piecewise_time_ms" in meta["timing"]


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="no file"):
        main(["profile", "--device", "cpu", "--models", "llama-9", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["profile", "--device", "cpu", "--models", str(tmp_path / "x.yaml"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown"):
        main(["profile", "--device", "cpu", "--models", "llama-2-7b", "--ops", "softmax", "--out", str(tmp_path)])
