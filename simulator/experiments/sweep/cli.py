"""servesim-sweep: run a space file's capacity searches, or rebuild the report of finished results."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from simulator.atomic import write_text_atomically
from simulator.config import ConfigError
from simulator.experiments.sweep.capacity_points import CapacityPointRunner, check_points
from simulator.experiments.sweep.execute import run_sweep
from simulator.experiments.sweep.results import RESULTS_JSONL
from simulator.experiments.sweep.space import enumerate_points, load_space


def write_report(out_dir: Path, table: pd.DataFrame, trials: pd.DataFrame, title: str,
                 pareto_latency: str = "ttft_s_p99") -> tuple[Path, Path]:
    """report.md and report.html (with figures/ PNGs) for a results table."""
    from plots.cli import capacity_figures
    from simulator.report import sweep_html, sweep_markdown

    out_dir = Path(out_dir)
    figures = capacity_figures(table, trials, out_dir / "figures") if len(table) else []
    relative = [p.relative_to(out_dir) for p in figures]
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_text_atomically(md_path, sweep_markdown(table, title, relative, pareto_latency))
    write_text_atomically(html_path, sweep_html(table, title, relative, pareto_latency))
    return md_path, html_path


def main(argv: list[str] | None = None) -> int:
    """servesim-sweep: run a space file's capacity searches (or rebuild a report)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="servesim-sweep",
        description="Capacity search over every feasible configuration of a space file; resumable. "
                    "See docs/capacity_and_sweeps.md.")
    parser.add_argument("space", nargs="?", type=Path, help="space YAML (e.g. conf/sweep/policies.yaml)")
    parser.add_argument("--out", type=Path, help="results directory (default: sweeps/<space name>)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every point (repeatable), e.g. search=quick")
    parser.add_argument("--executor", choices=["local", "serial", "ray"], default="local",
                        help="local: process pool (default); serial: in this process; ray: a Ray cluster")
    parser.add_argument("--workers", type=int, default=0, help="parallel points (0: all cores)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (e.g. ray://head:10001 or auto); default starts a local Ray")
    parser.add_argument("--retry-failed", action="store_true", help="run points that failed before again")
    parser.add_argument("--dry-run", action="store_true", help="list the points and feasibility, run nothing")
    parser.add_argument("--report", nargs="+", type=Path, metavar="DIR",
                        help="only rebuild report.md/report.html from results under these directories "
                             "(sweep dirs or servesim-capacity -m trees)")
    parser.add_argument("--pareto-latency", default="ttft_s_p99",
                        help="latency column of the Pareto frontier (default ttft_s_p99)")
    args = parser.parse_args(argv)

    if args.report:
        return _report_only(args.report, args.out, args.pareto_latency)
    if args.space is None:
        parser.error("give a space file, or --report DIR")
    try:
        space = load_space(args.space)
        space.base = space.base + list(args.extra)
        points = enumerate_points(space)
        fingerprints: dict[str, str] = {}
        resolved: dict[str, tuple] = {}
        infeasible = check_points(points, fingerprints=fingerprints, resolved=resolved)
    except ConfigError as e:
        print(f"servesim-sweep: {e}", file=sys.stderr)
        return 2
    out_dir = args.out or Path("sweeps") / space.name
    print(f"{space.name}: {len(points)} points, {len(points) - len(infeasible)} feasible -> {out_dir}")
    if args.dry_run:
        for point in points:
            reason = infeasible.get(point.point_id)
            print(f"  {point.point_id}  {' '.join(point.overrides)}" + (f"\n      infeasible: {reason}" if reason else ""))
        return 0
    try:
        outcome = run_sweep(points, out_dir, CapacityPointRunner(resolved), infeasible, executor=args.executor,
                            workers=args.workers, ray_address=args.ray_address, retry_failed=args.retry_failed,
                            point_fingerprints=fingerprints)
    except KeyboardInterrupt:
        print(f"servesim-sweep: interrupted; the finished points are recorded in {out_dir / RESULTS_JSONL}. "
              f"Run the same command to resume.", file=sys.stderr)
        return 130
    md_path, html_path = write_report(out_dir, outcome.table, outcome.trials, space.name, args.pareto_latency)
    rerun = f" ({outcome.stale} finished before, rerun: their inputs changed)" if outcome.stale else ""
    print(f"ran {outcome.ran}{rerun}, skipped {outcome.skipped} finished, {outcome.failed} failed, "
          f"{len(infeasible)} infeasible; {outcome.wall_s:.1f} s\n  {out_dir / 'results.parquet'}\n  {md_path}\n  {html_path}")
    return 0


def _unreadable_table(path: Path) -> str | None:
    """Why the parquet file at `path` cannot be read (e.g. truncated by a kill), or None when it can."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as e:  # noqa: BLE001 - any reason is reported the same way, in one line
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    return None


def _report_only(dirs: list[Path], out_dir: Path | None, pareto_latency: str) -> int:
    import sys

    from plots.cli import capacity_tables, find_results

    found = find_results(dirs)
    for sweep_dir in found["sweeps"]:
        unreadable = _unreadable_table(sweep_dir / "results.parquet")
        if unreadable:
            print(f"servesim-sweep: {sweep_dir / 'results.parquet'} cannot be read ({unreadable}); rerun the "
                  f"sweep into {sweep_dir} to rebuild it from {RESULTS_JSONL}", file=sys.stderr)
            return 2
    combined = capacity_tables(found)
    if combined is None:
        print("servesim-sweep: no results.parquet or capacity.json under " + ", ".join(map(str, dirs)))
        return 1
    out_dir = out_dir or dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = write_report(out_dir, *combined, out_dir.name, pareto_latency)
    print(f"{md_path}\n{html_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
