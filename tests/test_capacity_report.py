"""capacity.json rows and the Markdown/HTML reports, on hand-made records and tables."""
import numpy as np
import pandas as pd

from simulator.experiments.capacity import record_row, trial_rows
from simulator.report import capacity_markdown, config_label, markdown_table, sweep_html, sweep_markdown


def make_record(policy="sarathi", chunk=512, capacity=4.0, slo_name="strict", gpus=1, cost=0.5):
    trials = [
        {"rate_qps": 2.0, "feasible": True, "metrics": {"ttft_s_p99": 0.4, "tbt_s_p99": 0.05}, "violations": [],
         "wall_s": 1.0, "error": ""},
        {"rate_qps": 4.0, "feasible": True, "metrics": {"ttft_s_p99": 0.9, "tbt_s_p99": 0.08}, "violations": [],
         "wall_s": 1.0, "error": ""},
        {"rate_qps": 8.0, "feasible": False, "metrics": {"ttft_s_p99": "inf", "tbt_s_p99": 0.3},
         "violations": ["p99_tbt_s<=0.1 (measured 0.3 s)"], "wall_s": 1.0, "error": ""},
    ]
    return {
        "summary": {"model": "mistral-7b", "hardware": "h100", "policy": policy, "chunk_size": chunk,
                    "max_batch_size": 128, "tp": 1, "pp": 1, "num_replicas": gpus, "num_gpus": gpus,
                    "workload": "arxiv", "slo_name": slo_name},
        "search": {"tolerance": 0.02, "num_requests": 2048},
        "slos": [{"metric": "tbt_s", "percentile": 99.0, "max_s": 0.1, "name": "p99_tbt_s<=0.1"}],
        "capacity_qps": capacity, "status": "converged", "lowest_failing_qps": 8.0,
        "num_gpus": gpus, "qps_per_gpu": capacity / gpus, "price_per_gpu_hour_usd": 2.5,
        "cost_per_million_tokens_usd": cost, "cost_per_million_output_tokens_usd": cost * 10,
        "metrics_at_capacity": trials[1]["metrics"], "trials": trials, "search_wall_s": 3.0,
    }


def test_record_row_flattens_summary_capacity_and_metrics_at_capacity():
    row = record_row(make_record())
    assert row["policy"] == "sarathi" and row["chunk_size"] == 512
    assert row["capacity_qps"] == 4.0 and row["capacity_status"] == "converged"
    assert row["ttft_s_p99"] == 0.9 and row["num_trials"] == 3
    rows = trial_rows(make_record())
    assert [r["rate_qps"] for r in rows] == [2.0, 4.0, 8.0]
    assert rows[2]["ttft_s_p99"] == np.inf and rows[2]["violations"].startswith("p99_tbt_s")


def test_capacity_markdown_states_the_result_and_every_trial():
    text = capacity_markdown(make_record())
    assert "# Capacity: sarathi c512 b128 h100 mistral-7b" in text
    assert "**capacity: 4 requests/s** (to within 2%: 8 req/s failed)" in text
    assert "$0.5 per million tokens" in text
    trial_lines = [line for line in text.splitlines() if line.startswith(("| 2 |", "| 4 |", "| 8 |"))]
    assert len(trial_lines) == 3
    assert "inf" in trial_lines[2] and "p99_tbt_s<=0.1" in trial_lines[2]


def test_markdown_table_formats_and_escapes():
    text = markdown_table([{"a": 1234567, "b": float("nan"), "c": "x|y", "d": 0.000123}], headers={"a": "A"})
    assert text.splitlines()[0] == "| A | b | c | d |"
    assert text.splitlines()[2] == "| 1,234,567 | - | x\\|y | 0.000123 |"


def test_config_label_names_only_what_is_set():
    assert config_label({"policy": "vllm", "chunk_size": None, "max_batch_size": 128, "tp": 2, "pp": 1,
                         "num_replicas": 1, "hardware": "h100"}) == "vllm b128 tp2 h100"


def sweep_table():
    rows = [record_row(make_record("sarathi", 512, 4.0, "strict", cost=0.5)),
            record_row(make_record("sarathi", 2048, 3.0, "strict", cost=0.7)),
            record_row(make_record("vllm", None, 1.0, "strict", cost=2.0)),
            record_row(make_record("sarathi", 2048, 12.0, "relaxed", gpus=2, cost=0.4)),
            record_row(make_record("vllm", None, 5.0, "relaxed", cost=0.45))]
    table = pd.DataFrame(rows).assign(status="ok", error="")
    table.loc[1, "ttft_s_p99"] = 0.3  # chunk 2048: less capacity but lower TTFT -> on the Pareto front
    failed = {"status": "error", "error": "RuntimeError: boom", "policy": "orca", "slo_name": "strict"}
    return pd.concat([table, pd.DataFrame([failed])], ignore_index=True)


def test_sweep_report_best_per_slo_cost_and_pareto():
    text = sweep_markdown(sweep_table(), "demo", figures=["figures/pareto.png"])
    sections = text.split("## ")
    best = next(s for s in sections if s.startswith("Best configuration per SLO"))
    # relaxed: sarathi 12 req/s on 2 GPUs = 6/GPU beats vllm's 5/GPU; strict: sarathi c512.
    assert "sarathi c2048 b128 x2" in best.splitlines()[4] and "| relaxed |" in best.splitlines()[4]
    assert "sarathi c512" in best.splitlines()[5] and "| strict |" in best.splitlines()[5]
    cheapest = next(s for s in sections if s.startswith("Cheapest"))
    assert "sarathi c2048 b128 x2" in cheapest and "| 0.4 |" in cheapest
    front = next(s for s in sections if s.startswith("Pareto frontier, SLO set strict"))
    front_rows = [line for line in front.splitlines() if line.startswith(("| sarathi", "| vllm"))]
    # Every row shares model and GPU, so labels leave them out.
    assert [r.split(" | ")[0] for r in front_rows] == ["| sarathi c2048 b128", "| sarathi c512 b128"]
    failures = next(s for s in sections if s.startswith("Configurations without"))
    assert "| orca | strict | error | RuntimeError: boom |" in failures
    assert "![pareto](figures/pareto.png)" in text


def test_sweep_html_embeds_figures_and_tables():
    page = sweep_html(sweep_table(), "demo", figures=["figures/pareto.png"])
    assert page.startswith("<!doctype html>")
    assert "<img src='figures/pareto.png'" in page
    assert page.count("<table") == 6  # best, cheapest, two Pareto fronts, all, failures


def test_a_capacity_record_names_the_batch_cap_the_run_used_on_that_gpu():
    # vllm_v1's max_num_seqs defaults to 1024 on an H100 and 256 on an A100 (vLLM's per-GPU defaults).
    from simulator.experiments.capacity.records import config_summary
    from simulator.run import SimulationConfig

    caps = {hw: config_summary(SimulationConfig.from_dict({"model": "llama-3-8b", "hardware": hw,
                                                           "policy": {"name": "vllm_v1"}}))["max_batch_size"]
            for hw in ("h100", "a100")}
    assert caps == {"h100": 1024, "a100": 256}
