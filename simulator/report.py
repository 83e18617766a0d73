"""Readable reports: one capacity search (Markdown) and a whole sweep (Markdown and an HTML page with
its figures). Reports only read result records and tables; they never run a simulation.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

# Columns that identify a configuration in sweep tables, in display order.
CONFIG_COLUMNS = ["model", "hardware", "policy", "chunk_size", "max_batch_size", "tp", "pp", "num_replicas",
                  "workload"]


def fmt(value, digits: int = 3) -> str:
    """A number for a table: significant digits, thousands separators, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if math.isinf(value):
        return "inf"
    if value != 0 and abs(value) < 10 ** -(digits - 1):
        return f"{value:.{digits}g}"
    return f"{value:,.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"


def markdown_table(rows: list[dict] | pd.DataFrame, columns: list[str] | None = None,
                   headers: dict[str, str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of `rows` (missing cells print as '-')."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    if not rows:
        return "_(none)_\n"
    columns = columns or list(rows[0])
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def config_label(row: dict, skip: tuple[str, ...] = ()) -> str:
    """Short name of a configuration, e.g. 'sarathi c512 b128 tp2 h100' (only the parts that are set;
    fields named in `skip`, e.g. a model every row shares, are left out)."""
    parts = [str(row.get("policy", "?"))]
    for key, prefix in (("chunk_size", "c"), ("max_batch_size", "b")):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{prefix}{int(value)}")
    for key in ("tp", "pp"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and int(value) > 1:
            parts.append(f"{key}{int(value)}")
    replicas = row.get("num_replicas")
    if replicas is not None and not (isinstance(replicas, float) and math.isnan(replicas)) and int(replicas) > 1:
        parts.append(f"x{int(replicas)}")
    for key in ("hardware", "model"):
        if isinstance(row.get(key), str) and key not in skip:
            parts.append(row[key])
    return " ".join(parts)


# --- one capacity search -------------------------------------------------------------------------

TRIAL_COLUMNS = [("rate_qps", "rate (req/s)"), ("feasible", "SLOs met"), ("ttft_s_p50", "TTFT P50 (s)"),
                 ("ttft_s_p90", "TTFT P90 (s)"), ("ttft_s_p99", "TTFT P99 (s)"), ("tbt_s_p99", "TBT P99 (s)"),
                 ("e2e_s_p50", "E2E P50 (s)"), ("queueing_delay_s_p99", "queueing P99 (s)"),
                 ("wall_s", "wall (s)"), ("violations", "violated")]


def capacity_markdown(record: dict) -> str:
    """The Markdown report of one capacity.json record."""
    summary = record["summary"]
    lines = [f"# Capacity: {config_label(summary)}", ""]
    lines.append(markdown_table([summary], list(summary)))
    lines += ["## SLOs", ""]
    lines.append(markdown_table(record["slos"], ["metric", "percentile", "max_s"],
                                {"max_s": "bound (s)", "percentile": "percentile"}))
    status_text = {
        "converged": f"to within {record['search']['tolerance']:.0%}: "
                     f"{fmt(record.get('lowest_failing_qps'))} req/s failed",
        "feasible_at_max_rate": "SLOs still met at the search's max_rate_qps: a lower bound",
        "infeasible": "SLOs not met even at min_rate_qps",
        "max_trials": "search stopped by max_trials: a lower bound",
    }[record["status"]]
    lines += ["## Result", "",
              f"- **capacity: {fmt(record['capacity_qps'])} requests/s** ({status_text})",
              f"- per GPU: {fmt(record['qps_per_gpu'])} requests/s on {record['num_gpus']} GPU(s)"]
    if record.get("cost_per_million_tokens_usd") is not None:
        lines.append(f"- cost: ${fmt(record['cost_per_million_tokens_usd'])} per million tokens (prompt + output), "
                     f"${fmt(record['cost_per_million_output_tokens_usd'])} per million output tokens "
                     f"at ${fmt(record['price_per_gpu_hour_usd'])}/GPU-hour")
    lines.append(f"- {len(record['trials'])} trials of {record['search']['num_requests']} requests, "
                 f"{fmt(record['search_wall_s'])} s in all")
    rejected = max((_number(t["metrics"].get("rejected_fraction", 0.0)) for t in record["trials"]), default=0.0)
    if rejected > 0:
        lines.append(f"- **{rejected:.1%} of measured requests were rejected** (they can never fit, e.g. prompt + "
                     "output > max_model_len) and are left out of the latencies; clip the workload "
                     "(workload.max_prompt_tokens / max_output_tokens) or choose a longer-context model")
    lines += ["", "## Trials", ""]
    rows = []
    for trial in record["trials"]:
        metrics = {k: _number(v) for k, v in trial["metrics"].items()}
        rows.append({**metrics, "rate_qps": trial["rate_qps"], "feasible": trial["feasible"],
                     "wall_s": trial["wall_s"], "violations": "; ".join(trial["violations"]) or trial.get("error", "")})
    columns = [c for c, _ in TRIAL_COLUMNS if any(c in r for r in rows)]
    lines.append(markdown_table(rows, columns, dict(TRIAL_COLUMNS)))
    return "\n".join(lines)


def _number(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


# --- a sweep -------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["label", "slo_name", "capacity_qps", "qps_per_gpu", "cost_per_million_tokens_usd",
                   "ttft_s_p99", "tbt_s_p99", "e2e_s_p50", "capacity_status"]
SUMMARY_HEADERS = {"label": "configuration", "slo_name": "SLO set", "capacity_qps": "capacity (req/s)",
                   "qps_per_gpu": "req/s per GPU", "cost_per_million_tokens_usd": "$ / M tokens",
                   "ttft_s_p99": "TTFT P99 (s)", "tbt_s_p99": "TBT P99 (s)", "e2e_s_p50": "E2E P50 (s)",
                   "capacity_status": "search"}


def with_labels(table: pd.DataFrame) -> pd.DataFrame:
    """The table with a 'label' column naming each configuration (model and GPU only where they vary)."""
    table = table.copy()
    skip = tuple(c for c in ("hardware", "model") if c in table and table[c].nunique(dropna=True) <= 1)
    table["label"] = [config_label(row, skip) for row in table.to_dict("records")]
    return table


def best_rows(table: pd.DataFrame, group_column: str, value_column: str, ascending: bool) -> pd.DataFrame:
    """For each value of `group_column`, the row with the best `value_column` (NaN never wins)."""
    usable = table.dropna(subset=[value_column])
    usable = usable[np.isfinite(usable[value_column].astype(float))]
    if usable.empty:
        return usable
    ranked = usable.sort_values(value_column, ascending=ascending, kind="stable")
    return ranked.drop_duplicates(subset=[group_column]).sort_values(group_column)


def sweep_sections(table: pd.DataFrame, pareto_latency: str = "ttft_s_p99") -> list[tuple[str, pd.DataFrame, str]]:
    """(title, rows, note) of each section of a sweep report, shared by the Markdown and HTML forms."""
    from plots.pareto import (
        pareto_front,  # plots reads results; importing it here keeps report -> plots one-way
    )

    table = with_labels(table)
    for column in ("capacity_qps", "qps_per_gpu", "cost_per_million_tokens_usd", pareto_latency):
        if column not in table:
            table[column] = np.nan
    for column, default in (("status", "ok"), ("error", ""), ("slo_name", "-")):
        if column not in table:
            table[column] = default
    ok = table[(table["status"] == "ok") & (table["capacity_qps"] > 0)]
    sections = [
        ("Best configuration per SLO set (highest capacity per GPU)",
         best_rows(ok, "slo_name", "qps_per_gpu", ascending=False), ""),
        ("Cheapest configuration per SLO set (lowest cost per million tokens)",
         best_rows(ok, "slo_name", "cost_per_million_tokens_usd", ascending=True),
         "Needs hardware.price_per_hour_usd; cost = GPUs x price / tokens served per hour at capacity."),
    ]
    for slo_name, group in ok.groupby("slo_name", sort=True):
        front = pareto_front(group, "qps_per_gpu", pareto_latency)
        if len(front):
            sections.append((f"Pareto frontier, SLO set {slo_name}: capacity per GPU vs {pareto_latency}", front,
                             "No other configuration has both more capacity per GPU and lower latency."))
    ranked = ok.sort_values(["slo_name", "qps_per_gpu"], ascending=[True, False])
    sections.append(("All configurations that met their SLOs at some rate", ranked, ""))
    bad = table[table["status"] != "ok"]
    zero = table[(table["status"] == "ok") & ~(table["capacity_qps"] > 0)]
    failed = pd.concat([bad, zero.assign(error="SLOs not met at the lowest rate searched")])
    sections.append(("Configurations without a capacity (infeasible, failed or never meeting the SLOs)", failed, ""))
    return sections


def sweep_markdown(table: pd.DataFrame, title: str, figures: list[Path] = (), pareto_latency: str = "ttft_s_p99") -> str:
    """The Markdown report of a sweep's results table. `figures` are paths relative to the report."""
    counts = table["status"].value_counts().to_dict() if "status" in table else {}
    lines = [f"# Sweep: {title}", "",
             f"{len(table)} configurations: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]
    for heading, rows, note in sweep_sections(table, pareto_latency):
        lines += [f"## {heading}", ""]
        if note:
            lines += [note, ""]
        if heading.startswith("Configurations without"):
            lines.append(markdown_table(rows, ["label", "slo_name", "status", "error"],
                                        {"label": "configuration", "slo_name": "SLO set"}))
        else:
            columns = [c for c in SUMMARY_COLUMNS if c in rows] if len(rows) else SUMMARY_COLUMNS[:1]
            lines.append(markdown_table(rows, columns, SUMMARY_HEADERS))
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(lines)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; }
"""


def sweep_html(table: pd.DataFrame, title: str, figures: list[Path] = (), pareto_latency: str = "ttft_s_p99") -> str:
    """A self-contained HTML page (figures linked by relative path) with the same sections."""
    counts = table["status"].value_counts().to_dict() if "status" in table else {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{HTML_STYLE}</style></head><body>", f"<h1>Sweep: {html.escape(title)}</h1>",
             "<p>" + html.escape(f"{len(table)} configurations: "
                                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))) + "</p>"]
    for figure in figures:
        parts.append(f"<img src='{html.escape(str(figure))}' alt='{html.escape(Path(figure).stem)}'>")
    for heading, rows, note in sweep_sections(table, pareto_latency):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        if heading.startswith("Configurations without"):
            columns, headers = ["label", "slo_name", "status", "error"], {"label": "configuration", "slo_name": "SLO set"}
        else:
            columns, headers = [c for c in SUMMARY_COLUMNS if c in rows], SUMMARY_HEADERS
        if len(rows):
            shown = pd.DataFrame({headers.get(c, c): [fmt(v) for v in rows[c]] for c in columns if c in rows})
            parts.append(shown.to_html(index=False, escape=True, border=0))
        else:
            parts.append("<p><em>(none)</em></p>")
    parts.append("</body></html>")
    return "\n".join(parts)
