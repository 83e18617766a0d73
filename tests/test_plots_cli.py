"""servesim-plots on result directories written by the simulator's own writers."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from test_capacity_report import make_record

from plots.cli import find_results, main, run_config, tbt_gaps_from_token_times
from simulator.metrics import IterationRecords, RequestRecords, summarize, tbt_gaps_s, write_outputs


def run_records(shift_s: float):
    """Two requests, r0 tokens at 1.0 1.1 1.3 1.6 and r1 at 2.0 2.5 (shifted), on a 2-stage pipeline."""
    records = RequestRecords(
        request_id=np.arange(2), replica_id=np.array([0, 0]), arrived_s=np.array([0.0, 0.5]),
        prompt_tokens=np.array([100, 100]), output_tokens=np.array([4, 2]),
        first_scheduled_s=np.array([0.5, 0.5]), first_token_s=np.array([1.0, 2.0]) + shift_s,
        completed_s=np.array([1.6, 2.5]) + shift_s, preemptions=np.array([0, 0]),
        rejected=np.array([False, False]), reject_reason=np.array(["", ""], dtype=object),
        token_times_s=np.array([1.0, 1.1, 1.3, 1.6, 2.0, 2.5]) + shift_s, token_offsets=np.array([0, 4, 6]),
    )
    iterations = IterationRecords(
        replica_id=np.zeros(4, int), stage=np.array([0, 1, 0, 1]), start_s=np.array([0.5, 0.6, 0.9, 1.0]),
        duration_s=np.full(4, 0.1), batch_size=np.array([1, 1, 2, 2]), num_prefill_tokens=np.array([100, 100, 50, 50]),
        num_decode_tokens=np.array([0, 0, 1, 1]), kv_blocks_used=np.array([7, 7, 11, 11]),
    )
    return records, iterations


@pytest.fixture
def results(tmp_path):
    for policy, shift in (("vllm", 0.3), ("sarathi", 0.0)):
        records, iterations = run_records(shift)
        run_dir = tmp_path / "runs" / policy
        write_outputs(run_dir, records, iterations, summarize(records, iterations, 3.0, 0.1))
        config = {"model": {"name": "mistral-7b"}, "policy": {"name": policy, "chunk_size": 512 if policy == "sarathi" else None},
                  "cluster": {"tp": 1, "pp": 2, "num_replicas": 1}}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for i, (policy, chunk, capacity) in enumerate([("sarathi", 512, 4.0), ("sarathi", 2048, 6.0), ("vllm", None, 2.0)]):
        directory = tmp_path / "multirun" / str(i)
        directory.mkdir(parents=True)
        (directory / "capacity.json").write_text(json.dumps(make_record(policy, chunk, capacity)))
    return tmp_path


def test_gaps_from_token_times_match_the_simulators_own(results):
    records, _ = run_records(0.0)
    tokens = pd.read_parquet(results / "runs" / "sarathi" / "token_times.parquet").sample(frac=1, random_state=1)
    np.testing.assert_allclose(np.sort(tbt_gaps_from_token_times(tokens)), np.sort(tbt_gaps_s(records)))


def test_finds_each_kind_and_reads_run_configs(results):
    found = find_results([results])
    assert [d.name for d in found["runs"]] == ["sarathi", "vllm"]
    assert [d.name for d in found["capacity"]] == ["0", "1", "2"]
    assert run_config(found["runs"][0])["chunk_size"] == 512  # from config.yaml
    # The simulator's own summary.json `setup` block wins when present.
    summary_path = found["runs"][1] / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["setup"] = {"model": "llama-2-7b", "policy": "vllm", "policy_params": {"max_num_seqs": 64}, "tp": 2,
                        "pp": 1, "num_replicas": 1, "kv_blocks_per_engine": 100}
    summary_path.write_text(json.dumps(summary))
    config = run_config(found["runs"][1])
    assert (config["policy"], config["max_batch_size"], config["tp"]) == ("vllm", 64, 2)


def test_cli_writes_every_figure_the_results_support(results, capsys):
    out = results / "figs"
    assert main([str(results), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["capacity_by_policy.png", "capacity_vs_chunk.png", "latency_cdf.png", "pareto.png",
                     "pipeline_bubbles.png", "timeline_sarathi.png", "timeline_vllm.png", "ttft_tbt_tradeoff.png"]
    assert all(p.stat().st_size > 5000 for p in out.iterdir())
    assert len(capsys.readouterr().out.splitlines()) == 8


def test_cli_errors_clearly_on_missing_or_empty_dirs(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert "no results found" in capsys.readouterr().err


def write_run(run_dir, setup: dict, shift_s: float = 0.0):
    """A run directory as `servesim` writes it, with `setup` as its summary's setup block."""
    records, iterations = run_records(shift_s)
    summary = summarize(records, iterations, 3.0, 0.1) | {"setup": setup}
    write_outputs(run_dir, records, iterations, summary)


COLOCATED = {"model": "llama-3-8b", "hardware": "h100", "policy": "sarathi", "tp": 1, "pp": 1, "num_replicas": 1,
             "policy_params": {"chunk_size": 512, "max_batch_size": 128}, "workload": "conversation",
             "engine": "vllm_v1", "seed": 0, "kv_blocks_per_engine": 100}
# What simulator/disagg writes: pool pairs as "prefill/decode" strings.
DISAGGREGATED = COLOCATED | {"policy": "disagg(vllm/sarathi)", "tp": "1/1", "pp": "1/1", "num_replicas": 2,
                             "policy_params": {"decode.chunk_size": 2048}, "disagg": {"prefill": {}, "decode": {}}}


def test_a_disaggregated_run_beside_a_colocated_one_is_drawn(tmp_path, capsys):
    write_run(tmp_path / "X" / "colo", COLOCATED)
    write_run(tmp_path / "X" / "disagg", DISAGGREGATED, shift_s=0.2)
    out = tmp_path / "figs"
    assert main([str(tmp_path / "X"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["latency_cdf.png", "pipeline_bubbles.png",
                                                      "timeline_colo.png", "timeline_disagg.png"]
    assert capsys.readouterr().err == ""


def test_an_unreadable_run_is_skipped_with_one_line_and_the_others_drawn(tmp_path, capsys):
    write_run(tmp_path / "runs" / "good", COLOCATED)
    broken = tmp_path / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "requests.parquet").write_bytes(b"not parquet")
    (tmp_path / "cap").mkdir()
    (tmp_path / "cap" / "capacity.json").write_text("{")  # a search still writing its record
    out = tmp_path / "figs"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["latency_cdf.png", "pipeline_bubbles.png", "timeline_good.png"]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"servesim-plots: skipped {broken} (")
    assert warnings[1].startswith(f"servesim-plots: skipped {tmp_path / 'cap'} (JSONDecodeError")


def test_run_labels_name_only_what_sets_each_run_apart(tmp_path):
    from plots.cli import run_labels

    run = lambda **fields: {"policy": "sarathi", "chunk_size": 512, "engine": "vllm_v1", "model": "llama-3-8b",
                            "tp": 1, "num_replicas": 1, "router": "round_robin", "seed": 0} | fields
    dirs = [tmp_path / name for name in "abcdefg"]
    # A chunk-size sweep: every run differs, so every run names its chunk.
    assert run_labels([run(chunk_size=c) for c in (256, 512, 2048)], dirs[:3]) == [
        "Sarathi-Serve chunk 256", "Sarathi-Serve chunk 512", "Sarathi-Serve chunk 2048"]
    # The README's runs side by side: each names only where it departs from what most runs share.
    configs = [run(), run(engine="vllm_v0"), run(model="yi-34b", tp=2), run(num_replicas=4, router="lot"),
               run(policy="vllm", chunk_size=None), run(policy="disagg(vllm/sarathi)", tp="1/1", num_replicas=2,
                                                        disaggregated=True), {}]
    assert run_labels(configs, dirs) == ["Sarathi-Serve", "Sarathi-Serve vllm_v0", "Sarathi-Serve yi-34b tp2",
                                         "Sarathi-Serve 4 replicas lot", "vLLM",
                                         "disagg(vllm/sarathi) 2 replicas round_robin", "g"]
    # Two runs of one configuration (the same command twice) are told apart by their directories.
    assert run_labels([run(), run()], dirs[:2]) == ["Sarathi-Serve (a)", "Sarathi-Serve (b)"]
