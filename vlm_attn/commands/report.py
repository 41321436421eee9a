"""`vlm-attn report RUN_DIR...`: compare finished runs in a markdown table (and a CSV), with bootstrap intervals,
paired tests against a baseline (Holm-corrected) and a figure.

    vlm-attn report runs/chair-* --csv chair.csv
    vlm-attn report runs/chair-* --baseline runs/chair-base
    vlm-attn report runs/* --plot figure.png
"""

from __future__ import annotations

import argparse
import textwrap
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import write
from .compare import add_bootstrap_args, check_bootstrap_args, check_run_dir


def _csv_path(base: Path, task: str, several: bool) -> Path:
    """``base`` itself for one task; ``<stem>.<task><suffix>`` when the runs span several tasks."""
    return base.with_name(f"{base.stem}.{task}{base.suffix or '.csv'}") if several else base


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.report import METRICS_FILE, load_run, markdown_table, with_intervals, write_csv

    if args.digits < 0:
        raise UserError(f"--digits must be >= 0, got {args.digits}")
    check_bootstrap_args(args)
    if args.plot:
        from ..eval.plot import check_plot_path

        check_plot_path(args.plot)  # matplotlib present and a known image suffix, before any work
    baseline = check_run_dir(args.baseline, "--baseline") if args.baseline else None
    by_task: dict[str, list[Any]] = defaultdict(list)
    progress = sys.stderr.isatty()
    for run_dir in args.runs:
        path = Path(run_dir)
        if not (path / METRICS_FILE).is_file():
            sys.stderr.write(f"skipping {path}: no {METRICS_FILE} (unfinished run? finish it with --resume)\n")
            continue
        run = load_run(path)
        if args.no_intervals:
            run = dataclasses.replace(run, intervals=None)
        else:
            try:
                run = with_intervals(run, args.bootstrap, args.bootstrap_seed, args.level, progress)
            except UserError as exc:  # e.g. a metrics.json without its per-sample files: values alone
                sys.stderr.write(f"no intervals for {path}: {exc}\n")
        by_task[run.task].append(run)
    if not by_task:
        raise UserError(f"none of the {len(args.runs)} directories holds a {METRICS_FILE}; pass finished run "
                        "folders (written by vlm-attn eval)")
    several = len(by_task) > 1
    for task, runs in by_task.items():
        if several:
            write(f"## {task.upper()}\n")
        write(markdown_table(runs, percent=not args.raw, digits=args.digits).rstrip())
        iv = next((r.intervals for r in runs if r.intervals), None)
        if not args.no_intervals and iv:
            write(f"\n[low, high]: {iv['level']:.0%} percentile bootstrap intervals over {iv['unit']}, "
                  f"{iv['n_resamples']} resamples, seed {iv['seed']}")
        if several:
            write()
        if args.csv:
            csv_path = write_csv(runs, _csv_path(Path(args.csv), task, several))
            sys.stderr.write(f"wrote {csv_path}\n")
    if baseline is not None:
        _baseline(args, baseline, by_task, progress)
    if args.plot:
        from ..eval.plot import plot_runs

        runs = [r for rs in by_task.values() for r in rs]
        sys.stderr.write(f"wrote {plot_runs(runs, args.plot)}\n")
    return 0


def _baseline(args: argparse.Namespace, baseline: Path, by_task: dict[str, list[Any]], progress: bool) -> None:
    from ..eval.compare import compare_baseline, comparison_table, describe
    from ..eval.report import load_run

    task = load_run(baseline).task
    others = [r.path for r in by_task.get(task, []) if Path(r.path).resolve() != baseline.resolve()]
    if not others:
        raise UserError(f"--baseline {baseline} is a {task} run but no other {task} run was given to compare with "
                        "it; list the runs to compare")
    found = compare_baseline(baseline, others, args.bootstrap, args.bootstrap_seed, args.level, args.mcnemar,
                             progress)
    write()
    write(f"## Against the baseline {baseline.name}\n")
    write(describe(found))
    write()
    write(comparison_table(found, percent=not args.raw, digits=args.digits).rstrip())


def register(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="compare runs (metrics.json) in a markdown table with bootstrap intervals; tests against a baseline; "
             "a figure",
        description=textwrap.fill("Reads RUN_DIR/metrics.json of each run and prints one markdown row per run (fractions as "
                    "percentages), each metric with its seeded bootstrap interval, e.g. `CHAIR_I 12.4 [11.1, "
                    "13.8]` (images resampled for CHAIR, questions within each split for POPE; runs without "
                    "stored intervals get them from their per-sample files). Runs of different tasks get one table "
                    "each. Directories without metrics.json (unfinished runs) are skipped with a note. "
                    "--baseline adds paired differences of every other run of its task against it, with "
                    "Holm-adjusted p-values; --plot draws recall against CHAIR_I and POPE F1 per split.", 100),
        epilog="examples:\n  vlm-attn report runs/* --csv results.csv\n"
               "  vlm-attn report runs/chair-* --baseline runs/chair-base --plot chair.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, e.g. runs/*")
    rep.add_argument("--csv", default=None,
                     help="also write raw values to this CSV (one file per task, suffixed, when tasks are mixed)")
    rep.add_argument("--raw", action="store_true", help="show fractions as stored (0-1), not as percentages")
    rep.add_argument("--digits", type=int, default=1, help="decimals in the table (default 1)")
    rep.add_argument("--no-intervals", action="store_true", help="the values alone: no bootstrap intervals (nor bars in --plot)")
    add_bootstrap_args(rep)
    rep.add_argument("--baseline", default=None, metavar="RUN_DIR",
                     help="compare every other run of its task with this one (paired; Holm over the runs)")
    rep.add_argument("--mcnemar", choices=["auto", "exact", "chi2"], default="auto",
                     help="with --baseline, the POPE accuracy test (default auto: exact below 25 discordant pairs)")
    rep.add_argument("--plot", default=None, metavar="FILE.png",
                     help="draw recall vs CHAIR_I and POPE F1 per split, with intervals (needs matplotlib)")
    rep.set_defaults(func=cmd_report)
