"""Figures: the data they draw and their labelled axes (checked on matplotlib objects, not pixels)."""
import numpy as np
import pandas as pd
import pytest

from plots.capacity import capacity_bar_figure, capacity_vs_chunk_figure
from plots.common import save_figure
from plots.latency_cdf import LatencySample, empirical_cdf, latency_cdf_figure
from plots.pareto import pareto_figure, pareto_front
from plots.pipeline import bubble_fractions, pipeline_bubble_figure
from plots.timeline import batch_kv_timeline_figure
from plots.tradeoff import common_rate, tradeoff_figure, tradeoff_points


def test_empirical_cdf_steps():
    x, y = empirical_cdf(np.array([3.0, 1.0, np.nan, 2.0, np.inf]))
    assert list(x) == [1.0, 2.0, 3.0]
    assert list(y) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_latency_cdf_figure_has_three_labelled_panels_with_one_curve_per_run(tmp_path):
    rng = np.random.default_rng(0)
    samples = [LatencySample(name, name, rng.exponential(1, 200), rng.exponential(0.03, 5000), rng.exponential(9, 200))
               for name in ("orca", "sarathi")]
    fig = latency_cdf_figure(samples, slo_lines_s={"tbt_s": 0.1})
    axes = fig.axes[:3]  # the fourth holds the legend
    assert [ax.get_xlabel() for ax in axes] == ["TTFT (s)", "TBT (ms)", "E2E latency (s)"]
    assert axes[0].get_ylabel() == "fraction of requests" and axes[1].get_ylabel() == "fraction of token gaps"
    assert [line.get_label() for line in axes[0].get_lines()][:2] == ["orca", "sarathi"]
    tbt_curve = axes[1].get_lines()[0]
    assert tbt_curve.get_xdata().max() == pytest.approx(samples[0].tbt_s.max() * 1e3)  # drawn in ms
    assert any(line.get_label() == "SLO" for line in axes[1].get_lines())
    path = save_figure(fig, tmp_path / "cdf.png")
    assert path.stat().st_size > 10_000


def test_latency_cdf_legend_names_every_run_once_outside_the_panels():
    rng = np.random.default_rng(0)
    labels = [f"Sarathi-Serve chunk {c}" for c in (128, 256, 512, 1024, 2048, 4096)] + ["vLLM"]
    samples = [LatencySample(label, "vllm" if label == "vLLM" else "sarathi", rng.exponential(1, 100),
                             rng.exponential(0.03, 500), rng.exponential(9, 100)) for label in labels]
    fig = latency_cdf_figure(samples, slo_lines_s={"tbt_s": 0.1})
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == [*labels, "SLO"]
    legend_box = legends[0].get_window_extent()
    for panel in fig.axes[:3]:
        assert not legend_box.overlaps(panel.get_window_extent())


def test_legend_columns_narrow_to_what_long_labels_leave_room_for():
    from plots.latency_cdf import legend_columns

    assert legend_columns(["Sarathi-Serve chunk 256", "vLLM", "Orca", "SLO"]) == 3
    assert legend_columns(["vLLM", "Orca"]) == 2
    assert legend_columns(["disagg(vllm/sarathi) 2 replicas least_outstanding_tokens/least_outstanding_requests"]
                          + ["vLLM"] * 5) == 2
    assert legend_columns(["x" * 150, "vLLM"]) == 1


def test_curve_styles_never_draw_two_runs_alike():
    from plots.latency_cdf import curve_styles

    # Up to four runs of a policy: the policy's colour, one line style each.
    few = curve_styles(["sarathi", "sarathi", "vllm"])
    assert few[0][0] == few[1][0] != few[2][0] and few[0][1] != few[1][1]
    # Six runs of one policy would repeat a line style: each run gets its own colour instead.
    many = curve_styles(["sarathi"] * 6)
    assert len(set(many)) == 6
    # Runs of unknown config (named by directory) exhaust the fallback colours the same way.
    assert len(set(curve_styles([f"run{i}" for i in range(7)]))) == 7


def capacity_table():
    rows = []
    for slo, scale in (("strict", 1.0), ("relaxed", 2.0)):
        rows += [{"slo": slo, "policy": "orca", "chunk_size": np.nan, "capacity_qps": 0.5 * scale},
                 {"slo": slo, "policy": "vllm", "chunk_size": np.nan, "capacity_qps": 0.8 * scale}]
        rows += [{"slo": slo, "policy": "sarathi", "chunk_size": c, "capacity_qps": c / 512 * scale}
                 for c in (256, 512, 1024, 2048)]
    return pd.DataFrame(rows)


def test_capacity_vs_chunk_draws_chunked_policies_as_lines_and_others_as_levels():
    fig = capacity_vs_chunk_figure(capacity_table())
    strict, relaxed = fig.axes
    assert strict.get_title() == "strict" and relaxed.get_title() == "relaxed"
    assert strict.get_xlabel() == "chunk size / token budget (tokens)"
    assert strict.get_ylabel() == "capacity (requests/s)"
    lines = {line.get_label(): line for line in relaxed.get_lines()}
    assert list(lines["Sarathi-Serve"].get_xdata()) == [256, 512, 1024, 2048]
    assert list(lines["Sarathi-Serve"].get_ydata()) == pytest.approx([1.0, 2.0, 4.0, 8.0])
    assert list(lines["vLLM"].get_ydata()) == [1.6, 1.6]  # a horizontal level
    assert strict.get_xscale() == "log"


def test_capacity_bars_show_each_policys_best():
    fig = capacity_bar_figure(capacity_table())
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx([0.5, 4.0, 0.8])  # orca, sarathi (best chunk), vllm; strict panel
    assert fig.axes[0].get_ylabel() == "capacity (requests/s)"


def test_tradeoff_uses_the_rate_most_configurations_share():
    trials = pd.DataFrame(
        [{"policy": "sarathi", "chunk_size": c, "rate_qps": r, "ttft_s_p99": 2048 / c / r, "tbt_s_p99": c / 1e4}
         for c in (512, 2048) for r in (1, 2, 4)]
        + [{"policy": "vllm", "chunk_size": np.nan, "rate_qps": r, "ttft_s_p99": 0.5, "tbt_s_p99": 0.9}
           for r in (1, 2)]
    )
    assert common_rate(trials, ["policy", "chunk_size"]) == 2  # the highest rate all three simulated
    trials["feasible"] = trials["rate_qps"] < 2
    assert common_rate(trials, ["policy", "chunk_size"]) == 1  # ... and at which all met their SLOs
    trials.loc[trials["rate_qps"] == 1, "ttft_s_p99"] = np.inf  # unfinished requests: cannot be drawn
    rate = common_rate(trials, ["policy", "chunk_size"])
    assert rate == 2
    points = tradeoff_points(trials, rate, ["policy", "chunk_size"])
    assert len(points) == 3
    fig = tradeoff_figure(points, rate)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "P99 time between tokens (ms)"
    assert ax.get_ylabel() == "P99 time to first token (s)"
    sarathi = next(line for line in ax.get_lines() if line.get_label() == "Sarathi-Serve")
    assert list(sarathi.get_xdata()) == pytest.approx([51.2, 204.8])
    assert "2 requests/s" in ax.get_title()


def test_bubble_fraction_by_hand():
    # Two stages, one replica. Stage 0 busy [0,1] and [2,3]; stage 1 busy [1,2] and [3,4]: span 4 s.
    iterations = pd.DataFrame({"replica_id": [0, 0, 0, 0], "stage": [0, 1, 0, 1],
                               "start_s": [0.0, 1.0, 2.0, 3.0], "duration_s": [1.0, 1.0, 1.0, 1.0]})
    bubbles = bubble_fractions(iterations)
    assert list(bubbles["bubble_fraction"]) == pytest.approx([0.5, 0.5])
    fig = pipeline_bubble_figure({"pp2": bubbles, "pp2 sarathi": bubbles.assign(bubble_fraction=[0.1, 0.2])})
    ax = fig.axes[0]
    assert ax.get_ylabel() == "pipeline bubble (% of time idle)"
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([50, 10, 50, 20])


def test_batch_and_kv_timeline_axes():
    iterations = pd.DataFrame({"replica_id": 0, "stage": 0, "start_s": np.arange(10.0),
                               "duration_s": 1.0, "batch_size": np.arange(10), "kv_blocks_used": np.arange(10) * 10})
    fig = batch_kv_timeline_figure(iterations, kv_blocks_total=200)
    batch_ax, kv_ax = fig.axes
    assert batch_ax.get_ylabel() == "batch size (requests)"
    assert kv_ax.get_xlabel() == "simulated time (s)"
    assert kv_ax.get_ylabel() == "KV cache used (% of blocks)"
    assert kv_ax.get_lines()[0].get_ydata().max() == pytest.approx(45.0)


def test_pareto_front_by_hand():
    table = pd.DataFrame({"label": list("abcde"), "policy": "vllm",
                          "qps_per_gpu": [1.0, 2.0, 2.0, 3.0, 0.5],
                          "ttft_s_p99": [0.5, 0.4, 0.6, 2.0, 0.1]})
    front = pareto_front(table, "qps_per_gpu", "ttft_s_p99")
    # a is dominated by b (more QPS, lower latency); c by b (same QPS, higher latency).
    assert list(front["label"]) == ["e", "b", "d"]
    fig = pareto_figure(table)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "capacity per GPU (requests/s/GPU)"
    assert ax.get_ylabel() == "P99 TTFT at capacity (s)"
    frontier = next(line for line in ax.get_lines() if line.get_label() == "Pareto frontier")
    assert list(frontier.get_xdata()) == [0.5, 2.0, 3.0]


def test_pareto_frontier_labels_never_overlap_however_close_the_points():
    # Eight frontier points a few pixels apart: labels beside their points used to pile up.
    table = pd.DataFrame({"policy": "sarathi", "slo_name": "strict", "qps_per_gpu": 1 + 0.01 * np.arange(8),
                          "ttft_s_p99": 0.5 + 0.001 * np.arange(8),
                          "label": [f"Sarathi-Serve c{c} batch 128" for c in range(100, 900, 100)]})
    fig = pareto_figure(table)
    fig.canvas.draw()
    ax = fig.axes[0]
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t) for t in ax.texts]  # the text alone, not its leader line
    assert sorted(t.get_text() for t in ax.texts) == sorted(table["label"])
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert not any(box.overlaps(ax.get_window_extent()) for box in boxes)  # beside the data, not on it


def test_sarathi_reproduction_table_picks_the_papers_chunk_per_slo():
    from plots.sarathi import capacity_bars_figure, reproduction_table, table_markdown

    rows = []
    for slo, bound in (("strict", 0.1), ("relaxed", 0.5)):
        overrides = f"model=mistral-7b slo.slos=[{{metric:tbt_s,percentile:99,max_s:{bound}}}]"
        common = {"model": "mistral-7b", "workload": "arxiv_poisson", "slo_name": slo, "num_gpus": 1,
                  "overrides": overrides}
        rows += [{**common, "policy": "orca", "chunk_size": np.nan, "capacity_qps": 0.5},
                 {**common, "policy": "vllm", "chunk_size": np.nan, "capacity_qps": 1.0}]
        rows += [{**common, "policy": "sarathi", "chunk_size": c, "capacity_qps": {256: 1.5, 512: 2.6, 2048: 3.0}[c]}
                 for c in (256, 512, 2048)]
    table = reproduction_table(pd.DataFrame(rows))
    strict = table[table["slo"].str.startswith("strict")].iloc[0]
    relaxed = table[table["slo"].str.startswith("relaxed")].iloc[0]
    assert strict["slo"] == "strict (0.1 s)" and strict["sarathi"] == 2.6 and strict["sarathi_over_vllm"] == 2.6
    assert relaxed["sarathi"] == 3.0 and relaxed["sarathi_over_orca"] == 6.0
    assert strict["sarathi_best"] == 3.0 and strict["best_chunk"] == 2048
    text = table_markdown(table)
    assert "| mistral-7b (1) | arxiv_poisson | strict (0.1 s) | 0.50 | 1.00 | 2.60 | 2.6x | 5.2x | 3.00 (chunk 2048) |" in text
    fig = capacity_bars_figure(table)
    assert fig.axes[0].get_ylabel() == "capacity (requests/s)"
    assert [round(b.get_height(), 2) for b in fig.axes[0].patches][:2] == [0.5, 0.5]  # Orca in both SLO groups


def test_sarathi_table_reads_the_tbt_bound_of_the_slo_file_a_sweep_chose():
    from plots.sarathi import reproduction_table

    rows = []
    for slo in ("sarathi_strict_mistral7b", "sarathi_relaxed_mistral7b"):
        common = {"model": "mistral-7b", "workload": "arxiv_poisson", "slo_name": slo, "num_gpus": 1,
                  "overrides": f"model=mistral-7b engine=vllm_v0 workload=arxiv_poisson slo={slo} policy=sarathi"}
        rows += [{**common, "policy": "vllm", "chunk_size": np.nan, "capacity_qps": 1.0}]
        rows += [{**common, "policy": "sarathi", "chunk_size": c, "capacity_qps": c / 512} for c in (512, 2048)]
    table = reproduction_table(pd.DataFrame(rows)).set_index("slo")
    assert list(table.index) == ["sarathi_relaxed_mistral7b (0.5 s)", "sarathi_strict_mistral7b (0.1 s)"]
    assert table["sarathi"].tolist() == [4.0, 1.0]  # the paper's chunk: 2048 relaxed, 512 strict


def test_binned_mean_weights_by_iteration_duration():
    from plots.timeline import binned_mean

    # Bin [0, 2): batch 2 for 1.5 s and 6 for 0.5 s -> 3.0; bin [2, 4): nothing; bin [4, 6): 10.
    centers, means = binned_mean(np.array([0.0, 1.5, 4.0]), np.array([1.5, 0.5, 1.0]), np.array([2.0, 6.0, 10.0]), 2.0)
    assert list(centers) == [1.0, 5.0]
    assert list(means) == pytest.approx([3.0, 10.0])
