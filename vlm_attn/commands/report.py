"""`vlm-attn report RUN_DIR...`: compare finished runs in a markdown table (and a CSV)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import write


def _csv_path(base: Path, task: str, several: bool) -> Path:
    """``base`` itself for one task; ``<stem>.<task><suffix>`` when the runs span several tasks."""
    return base.with_name(f"{base.stem}.{task}{base.suffix or '.csv'}") if several else base


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.report import METRICS_FILE, load_run, markdown_table, write_csv

    if args.digits < 0:
        raise UserError(f"--digits must be >= 0, got {args.digits}")
    by_task: dict[str, list[Any]] = defaultdict(list)
    for run_dir in args.runs:
        path = Path(run_dir)
        if not (path / METRICS_FILE).is_file():
            sys.stderr.write(f"skipping {path}: no {METRICS_FILE} (unfinished run? finish it with --resume)\n")
            continue
        run = load_run(path)
        by_task[run.task].append(run)
    if not by_task:
        raise UserError(f"none of the {len(args.runs)} directories holds a {METRICS_FILE}; pass finished run "
                        "folders (written by vlm-attn eval)")
    several = len(by_task) > 1
    for task, runs in by_task.items():
        if several:
            write(f"## {task.upper()}\n")
        write(markdown_table(runs, percent=not args.raw, digits=args.digits).rstrip())
        if several:
            write()
        if args.csv:
            csv_path = write_csv(runs, _csv_path(Path(args.csv), task, several))
            sys.stderr.write(f"wrote {csv_path}\n")
    return 0


def register(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="compare runs (metrics.json) in a markdown table and optionally a CSV",
        description="Reads RUN_DIR/metrics.json of each run and prints one markdown row per run (fractions as "
                    "percentages). Runs of different tasks get one table each. Directories without metrics.json "
                    "(unfinished runs) are skipped with a note.",
    )
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, e.g. runs/*")
    rep.add_argument("--csv", default=None,
                     help="also write raw values to this CSV (one file per task, suffixed, when tasks are mixed)")
    rep.add_argument("--raw", action="store_true", help="show fractions as stored (0-1), not as percentages")
    rep.add_argument("--digits", type=int, default=1, help="decimals in the table (default 1)")
    rep.set_defaults(func=cmd_report)
