"""`vlm-attn compare RUN_A RUN_B`: B - A per metric on the same samples, with paired intervals and p-values.

    vlm-attn compare runs/chair-base runs/chair-var
    vlm-attn compare runs/pope-base runs/pope-pai --mcnemar exact --json cmp.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import write


def add_bootstrap_args(p: argparse.ArgumentParser) -> None:
    """--bootstrap, --bootstrap-seed, --level (shared by compare and report)."""
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples (default 1000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, metavar="S", help="seed of the resamples (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")


def check_bootstrap_args(args: argparse.Namespace) -> None:
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {args.bootstrap} (1000 is the usual number)")
    if not 0 < args.level < 1:
        raise UserError(f"--level must lie strictly between 0 and 1, got {args.level} (e.g. 0.95)")


def check_run_dir(path: str, flag: str = "RUN_DIR") -> Path:
    """A run folder with a metrics.json, else UserError naming it."""
    from ..eval.report import METRICS_FILE

    run = Path(path)
    if not (run / METRICS_FILE).is_file():
        raise UserError(f"{flag} {run}: no {METRICS_FILE} (not a finished run? finish it with "
                        "`vlm-attn eval ... --resume`)")
    return run


def cmd_compare(args: argparse.Namespace) -> int:
    from ..eval.compare import compare_pair, comparison_table, describe

    check_bootstrap_args(args)
    if args.digits < 0:
        raise UserError(f"--digits must be >= 0, got {args.digits}")
    a, b = check_run_dir(args.run_a, "RUN_A"), check_run_dir(args.run_b, "RUN_B")
    result = compare_pair(a, b, args.bootstrap, args.bootstrap_seed, args.level, args.mcnemar,
                          progress=sys.stderr.isatty())
    write(describe([result]))
    write()
    write(comparison_table([result], percent=not args.raw, digits=args.digits).rstrip())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
        sys.stderr.write(f"wrote {args.json}\n")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="paired comparison of two runs over the same samples (B - A, interval, p-value)",
        description="Per metric, B - A with a paired percentile bootstrap interval (images, or POPE questions "
                    "within each split, resampled jointly for both runs) and a p-value: the paired bootstrap's for "
                    "CHAIR and for POPE precision/recall/F1/yes-ratio, McNemar's test for POPE accuracy (exact or "
                    "chi-square, named in each row). Runs over different samples are refused. Runs made before "
                    "intervals existed work too: everything is read from their per-sample files.",
        epilog="example: vlm-attn compare runs/chair-base runs/chair-var --bootstrap 2000",
    )
    p.add_argument("run_a", metavar="RUN_A", help="the reference run directory (e.g. the baseline)")
    p.add_argument("run_b", metavar="RUN_B", help="the run compared with it")
    add_bootstrap_args(p)
    p.add_argument("--mcnemar", choices=["auto", "exact", "chi2"], default="auto",
                   help="POPE accuracy test: exact binomial, continuity-corrected chi-square, or auto (exact below "
                        "25 discordant pairs; default)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the comparison as JSON")
    p.add_argument("--raw", action="store_true", help="show fractions as stored (0-1), not as percentages")
    p.add_argument("--digits", type=int, default=1, help="decimals in the table (default 1)")
    p.set_defaults(func=cmd_compare)
