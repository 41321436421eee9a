"""Paired comparison of finished runs over the same samples: differences, intervals, p-values, Holm.

``compare_pair(A, B)`` reads both runs' per-sample tables (``tables``), refuses runs of different tasks or over
different samples, and gives per metric B - A with a paired bootstrap interval (resampling images, or questions
within each POPE split, jointly for both runs). The p-value is the paired bootstrap's for every CHAIR metric and
for POPE's precision, recall, F1 and yes-ratio; POPE accuracy is tested with McNemar's test on the per-question
right/wrong answers (exact or chi-square, named in each row; the average row pools the splits' discordant pairs).
``compare_baseline`` compares one baseline with several runs and adds Holm-adjusted p-values, the family being the
runs compared on the same metric row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from . import stats
from .report import RunRecord, _format, load_run
from .tables import SampleTable, load_table


@dataclass(frozen=True)
class Row:
    """One metric of a comparison (``metric`` dotted for POPE: ``random.f1``)."""

    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    test: str
    p_holm: float | None = None


@dataclass(frozen=True)
class Comparison:
    """B against A on the same samples, and how the numbers were made."""

    run_a: str
    run_b: str
    task: str
    n_samples: int
    rows: tuple[Row, ...]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"run_a": self.run_a, "run_b": self.run_b, "task": self.task, "n_samples": self.n_samples,
                "settings": dict(self.settings), "rows": [vars(r) for r in self.rows]}


def check_same_samples(a: SampleTable, b: SampleTable, name_a: str, name_b: str) -> None:
    """Raise UserError (one line) when the two runs did not score the same samples."""
    ids_a, ids_b = a.sample_ids(), b.sample_ids()
    if ids_a == ids_b:
        return
    only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
    parts = [f"{len(only_a)} only in {name_a}" + (f" (e.g. {only_a[0]})" if only_a else ""),
             f"{len(only_b)} only in {name_b}" + (f" (e.g. {only_b[0]})" if only_b else "")]
    raise UserError(f"{name_a} and {name_b} were not scored on the same samples ({'; '.join(parts)}): compare runs "
                    "over the same image list / question files with the same --limit and --seed, and rerun failed "
                    "samples with --resume --retry-errors")


def _load(run_dir: str | Path) -> tuple[RunRecord, SampleTable]:
    run = load_run(run_dir)
    record = {"task": run.task, "metrics": run.metrics, "provenance": run.provenance}
    return run, load_table(run_dir, record)


def compare_tables(
    run_a: RunRecord, table_a: SampleTable, run_b: RunRecord, table_b: SampleTable,
    n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED, level: float = stats.DEFAULT_LEVEL,
    mcnemar_test: str = "auto", progress: bool = False,
) -> Comparison:
    """The comparison of two loaded runs (see the module docstring)."""
    from tqdm.auto import tqdm

    if run_a.task != run_b.task:
        raise UserError(f"{run_a.run} is a {run_a.task} run and {run_b.run} a {run_b.task} run; compare runs of "
                        "one task")
    check_same_samples(table_a, table_b, run_a.run, run_b.run)
    table_b = table_b.aligned_to(table_a.ids)
    with tqdm(total=n_resamples * len(table_a.counts), desc="paired bootstrap", unit="resample", leave=False,
              disable=not progress) as bar:
        found = stats.paired_bootstrap(table_a.counts, table_b.counts, table_a.statistic, n_resamples, seed, level,
                                       table_a.average, bar.update)
    rows = []
    for stratum, metrics in found.items():
        for name, d in metrics.items():
            metric = name if run_a.task == "chair" else f"{stratum}.{name}"
            p_value, test = d.p_value, "paired bootstrap"
            if run_a.task == "pope" and name == "accuracy":
                strata = list(table_a.correct) if stratum == table_a.average else [stratum]
                b = sum(int((table_a.correct[s] & ~table_b.correct[s]).sum()) for s in strata)
                c = sum(int((~table_a.correct[s] & table_b.correct[s]).sum()) for s in strata)
                m = stats.mcnemar_from_counts(b, c, mcnemar_test)
                p_value, test = m.p_value, f"McNemar {m.test} (b={m.b}, c={m.c})"
            rows.append(Row(metric, d.a, d.b, d.difference, d.low, d.high, p_value, test))
    settings = {"runs": [run_a.path, run_b.path], "method": "paired percentile bootstrap",
                "n_resamples": n_resamples, "seed": seed, "level": level, "numpy": np.__version__,
                "mcnemar": mcnemar_test if run_a.task == "pope" else None,
                "parse_modes": [r.provenance.get("parse_mode") for r in (run_a, run_b)] if run_a.task == "pope"
                else None}
    return Comparison(run_a.run, run_b.run, run_a.task, len(table_a.sample_ids()), tuple(rows), settings)


def compare_pair(
    dir_a: str | Path, dir_b: str | Path, n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED, level: float = stats.DEFAULT_LEVEL, mcnemar_test: str = "auto",
    progress: bool = False,
) -> Comparison:
    """Run B against run A (their directories), B - A per metric."""
    run_a, table_a = _load(dir_a)
    run_b, table_b = _load(dir_b)
    return compare_tables(run_a, table_a, run_b, table_b, n_resamples, seed, level, mcnemar_test, progress)


def compare_baseline(
    baseline: str | Path, runs: Sequence[str | Path], n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED, level: float = stats.DEFAULT_LEVEL, mcnemar_test: str = "auto",
    progress: bool = False,
) -> list[Comparison]:
    """Each run against the baseline, with Holm-adjusted p-values over the runs for each metric row."""
    base, base_table = _load(baseline)
    comparisons = []
    for run_dir in runs:
        run, table = _load(run_dir)
        comparisons.append(compare_tables(base, base_table, run, table, n_resamples, seed, level, mcnemar_test,
                                          progress))
    if not comparisons:
        return []
    adjusted_rows: list[list[Row]] = [list(c.rows) for c in comparisons]
    for index in range(len(adjusted_rows[0])):
        adjusted = stats.holm([rows[index].p_value for rows in adjusted_rows])
        for rows, p in zip(adjusted_rows, adjusted):
            rows[index] = replace(rows[index], p_holm=p)
    return [replace(c, rows=tuple(rows), settings={**c.settings, "holm_family": len(comparisons)})
            for c, rows in zip(comparisons, adjusted_rows)]


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def comparison_table(comparisons: Sequence[Comparison], percent: bool = True, digits: int = 1) -> str:
    """A markdown table: one row per (run, metric) with A, B, B - A [interval], p-value, test (and Holm)."""
    holm = any(r.p_holm is not None for c in comparisons for r in c.rows)
    header = ["run", "metric", *(("baseline", "run's") if holm else ("A", "B")), "B - A [95% CI]" if all(
        c.settings["level"] == 0.95 for c in comparisons) else "B - A [CI]", "p", "test"] + (["p (Holm)"] * holm)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in comparisons:
        for r in c.rows:
            a, b, d, low, high = (_format(r.metric, v, percent, digits) for v in (r.a, r.b, r.difference, r.low,
                                                                                   r.high))
            cells = [c.run_b, r.metric, a, b, f"{d} [{low}, {high}]", _p(r.p_value), r.test] + (
                [_p(r.p_holm)] if holm else [])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def describe(comparisons: Sequence[Comparison]) -> str:
    """One line saying what was compared and how (for the top of the table)."""
    c = comparisons[0]
    s = c.settings
    unit = "images" if c.task == "chair" else "questions (resampled within each split)"
    text = (f"{c.task.upper()}: {', '.join(x.run_b for x in comparisons)} against {c.run_a} on the same "
            f"{c.n_samples} {unit}; paired percentile bootstrap, {s['n_resamples']} resamples, seed {s['seed']}")
    if c.task == "pope":
        text += f"; accuracy: McNemar ({s['mcnemar']}: exact below {stats.EXACT_BELOW} discordant pairs)" \
            if s["mcnemar"] == "auto" else f"; accuracy: McNemar ({s['mcnemar']})"
        modes = {m for x in comparisons for m in x.settings["parse_modes"]}
        if len(modes) > 1:
            text += f"; NOTE the runs were parsed with different modes {sorted(map(str, modes))}"
    if any(r.p_holm is not None for x in comparisons for r in x.rows):
        text += f"; Holm over the {len(comparisons)} runs per metric"
    return text

