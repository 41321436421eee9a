"""Compare evaluation runs: read each run's ``metrics.json``, build a markdown table and a CSV.

``metrics.json`` schema (one file per run directory)::

    {
      "task": "chair" | "pope",
      "method": "pai",                    # steering method, "baseline" for none
      "model": "llava-hf/llava-1.5-7b-hf",
      "metrics": {...},                   # chair: {"CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len"}
                                          # pope:  {"random": {...}, "popular": {...}, "adversarial": {...},
                                          #         "average": {...}}, each with accuracy, precision, recall,
                                          #         f1, yes_ratio (+ counts)
      "provenance": {...},                # free-form: lemmatizer, image list, POPE sha256, seed, versions, ...
      "intervals": {                      # seeded bootstrap intervals of every metric (see ``run_intervals``)
        "method": "percentile bootstrap", "level": 0.95, "n_resamples": 1000, "seed": 0,
        "unit": "images" | "questions (resampled within each split)", "n": {"all": 500} | {"random": 3000, ...},
        "metrics": {"CHAIR_I": [low, high], ...} | {"random": {"f1": [low, high], ...}, "average": {...}}
      }
    }

Fractions are stored in [0, 1]; the markdown table shows them as percentages by default, the CSV keeps the raw
numbers. Nested metrics become dotted columns (``random.accuracy``). A cell with an interval reads
``12.4 [11.1, 13.8]``; the CSV gets ``<column>.low`` and ``<column>.high`` beside it. Runs written before
intervals existed get theirs computed from their per-sample files (``tables``) when reported.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from vlm_attn.errors import UserError
from vlm_attn.eval import chair, pope
from vlm_attn.eval.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap
from vlm_attn.eval.tables import load_table

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TASKS: tuple[str, ...] = ("chair", "pope")
ID_COLUMNS: tuple[str, ...] = ("run", "method", "model")
# Column names (last dotted part) whose values are fractions, shown x100 in the markdown table.
FRACTION_METRICS = frozenset(chair.METRIC_NAMES) - {"Len"} | frozenset(pope.METRIC_NAMES)


@dataclass(frozen=True)
class RunRecord:
    """One run's ``metrics.json`` plus the directory it came from."""

    run: str
    task: str
    method: str
    model: str
    metrics: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] | None = None
    path: str | None = None  # the run directory


def metrics_record(
    task: str, method: str, model: str, metrics: Mapping[str, Any], provenance: Mapping[str, Any] | None = None,
    intervals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A validated ``metrics.json`` document (``intervals`` only when given)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    record = {
        "task": task, "method": str(method), "model": str(model),
        "metrics": dict(metrics), "provenance": dict(provenance or {}),
    }
    if intervals is not None:
        record["intervals"] = dict(intervals)
    return record


def run_intervals(
    run_dir: str | Path, record: Mapping[str, Any], n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL, progress: bool = False,
) -> dict[str, Any]:
    """The ``intervals`` entry of a run's metrics.json: a seeded percentile bootstrap of every metric, resampling
    images (CHAIR) or questions within each split (POPE), from the per-sample files in ``run_dir``.

    ``record`` is the run's metrics.json document; the per-sample tables must reproduce its metrics (checked).
    """
    from tqdm.auto import tqdm

    table = load_table(run_dir, record)
    with tqdm(total=n_resamples * len(table.counts), desc="bootstrap", unit="resample", disable=not progress,
              leave=False) as bar:
        found = bootstrap(table.counts, table.statistic, n_resamples, seed, level, table.average, bar.update)
    ranges = {name: {m: iv.as_list() for m, iv in values.items()} for name, values in found.items()}
    return {
        "method": "percentile bootstrap", "level": level, "n_resamples": n_resamples, "seed": seed,
        "unit": "images" if table.task == "chair" else "questions (resampled within each split)",
        "n": {name: len(ids) for name, ids in table.ids.items()},
        "metrics": ranges[next(iter(ranges))] if table.task == "chair" else ranges,
    }


def recorded_intervals(run_dir: str | Path, record: Mapping[str, Any], progress: bool = False) -> dict[str, Any] | None:
    """``run_intervals`` with the default settings for a run that has just been scored, or None (with a warning
    naming the reason) when its files cannot give them: a finished run is never lost over its intervals."""
    try:
        return run_intervals(run_dir, record, progress=progress)
    except UserError as exc:
        logger.warning("no bootstrap intervals for %s: %s", run_dir, exc)
        return None


def intervals_match(intervals: Mapping[str, Any] | None, n_resamples: int, seed: int, level: float) -> bool:
    """Whether stored intervals were made with these bootstrap settings."""
    return bool(intervals) and (intervals.get("n_resamples"), intervals.get("seed"), intervals.get("level")) == (
        n_resamples, seed, level)


def with_intervals(
    run: RunRecord, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
    progress: bool = False,
) -> RunRecord:
    """``run`` with intervals of these settings: the stored ones when they match, else computed from its files."""
    if intervals_match(run.intervals, n_resamples, seed, level):
        return run
    if run.path is None:
        raise ValueError(f"run {run.run} has no directory to compute intervals from")
    record = {"task": run.task, "metrics": run.metrics, "provenance": run.provenance}
    found = run_intervals(run.path, record, n_resamples, seed, level, progress)
    return RunRecord(run.run, run.task, run.method, run.model, run.metrics, run.provenance, found, run.path)


def write_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (see ``metrics_record``) to ``run_dir/metrics.json``."""
    record = metrics_record(
        record["task"], record["method"], record["model"], record["metrics"], record.get("provenance"),
        record.get("intervals"),
    )
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``run_dir/metrics.json``; the run is named after its directory."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); rerun the "
                        "run with --resume to write it again") from None
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}; it is not a metrics file")
    missing = [k for k in ("task", "method", "model", "metrics") if k not in data]
    if missing:
        raise UserError(f"{path}: missing keys {missing}; it is not a metrics.json written by vlm-attn eval")
    record = metrics_record(data["task"], data["method"], data["model"], data["metrics"], data.get("provenance"),
                            data.get("intervals"))
    return RunRecord(run=run_dir.name, path=str(run_dir), **record)


def load_runs(run_dirs: Iterable[str | Path]) -> list[RunRecord]:
    """``load_run`` for each directory, order kept."""
    return [load_run(d) for d in run_dirs]


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (``{"random": {"f1": x}}`` -> ``{"random.f1": x}``)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def default_columns(task: str, runs: Sequence[RunRecord]) -> list[str]:
    """Metric columns for ``task``: CHAIR's six metrics; for POPE accuracy and F1 of each split present, then
    every metric of the average."""
    if task == "chair":
        return list(chair.METRIC_NAMES)
    if task == "pope":
        present = {key.split(".")[0] for r in runs for key in flatten_metrics(r.metrics)}
        columns = [f"{s}.{m}" for s in pope.SPLITS if s in present for m in ("accuracy", "f1")]
        return columns + [f"average.{m}" for m in pope.METRIC_NAMES]
    raise ValueError(f"unknown task {task!r}")


def _single_task(runs: Sequence[RunRecord]) -> str:
    if not runs:
        raise ValueError("no runs to compare")
    tasks = sorted({r.task for r in runs})
    if len(tasks) != 1:
        raise ValueError(f"runs mix tasks {tasks}; compare one task at a time")
    return tasks[0]


def comparison_rows(
    runs: Sequence[RunRecord], columns: Sequence[str] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Header (id columns + metric columns) and one raw-valued row per run (None where a metric is absent)."""
    task = _single_task(runs)
    metric_columns = list(columns) if columns is not None else default_columns(task, runs)
    rows = []
    for r in runs:
        flat = flatten_metrics(r.metrics)
        row: dict[str, Any] = {"run": r.run, "method": r.method, "model": r.model}
        row.update({c: flat.get(c) for c in metric_columns})
        rows.append(row)
    return [*ID_COLUMNS, *metric_columns], rows


def _format(column: str, value: Any, percent: bool, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if percent and column.split(".")[-1] in FRACTION_METRICS:
        value = 100 * value
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def interval_of(run: RunRecord, column: str) -> tuple[float, float] | None:
    """The run's stored (low, high) interval of a dotted metric column, or None."""
    if not run.intervals:
        return None
    found = flatten_metrics(run.intervals.get("metrics", {})).get(column)
    return (float(found[0]), float(found[1])) if isinstance(found, (list, tuple)) and len(found) == 2 else None


def format_with_interval(column: str, value: Any, interval: tuple[float, float] | None, percent: bool = True,
                         digits: int = 1) -> str:
    """``12.4 [11.1, 13.8]`` (value and interval scaled like the value), or the value alone."""
    text = _format(column, value, percent, digits)
    if interval is None or value is None:
        return text
    return f"{text} [{_format(column, interval[0], percent, digits)}, {_format(column, interval[1], percent, digits)}]"


def markdown_table(
    runs: Sequence[RunRecord], columns: Sequence[str] | None = None, percent: bool = True, digits: int = 1
) -> str:
    """A GitHub-markdown table, one row per run; fractions x100 when ``percent``; a metric with a stored interval
    reads ``value [low, high]``."""
    header, rows = comparison_rows(runs, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for run, row in zip(runs, rows):
        cells = [_format(c, row[c], percent, digits) if c in ID_COLUMNS
                 else format_with_interval(c, row[c], interval_of(run, c), percent, digits) for c in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(runs: Sequence[RunRecord], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """The comparison as CSV with raw values (empty cell where a metric is absent); when any run has intervals,
    each metric column is followed by ``<column>.low`` and ``<column>.high``."""
    header, rows = comparison_rows(runs, columns)
    if any(r.intervals for r in runs):
        metric_columns = [c for c in header if c not in ID_COLUMNS]
        header = [*ID_COLUMNS, *(x for c in metric_columns for x in (c, f"{c}.low", f"{c}.high"))]
        for run, row in zip(runs, rows):
            for c in metric_columns:
                found = interval_of(run, c)
                row[f"{c}.low"], row[f"{c}.high"] = found if found is not None else (None, None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


def compare_runs(run_dirs: Iterable[str | Path], csv_path: str | Path | None = None, percent: bool = True) -> str:
    """Load runs, optionally write the CSV, and return the markdown table."""
    runs = load_runs(run_dirs)
    if csv_path is not None:
        write_csv(runs, csv_path)
    return markdown_table(runs, percent=percent)
