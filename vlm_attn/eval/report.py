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
      "provenance": {...}                 # free-form: lemmatizer, image list, POPE sha256, seed, versions, ...
    }

Fractions are stored in [0, 1]; the markdown table shows them as percentages by default, the CSV keeps the raw
numbers. Nested metrics become dotted columns (``random.accuracy``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from vlm_attn.errors import UserError
from vlm_attn.eval import chair, pope

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


def metrics_record(
    task: str, method: str, model: str, metrics: Mapping[str, Any], provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A validated ``metrics.json`` document."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    return {
        "task": task, "method": str(method), "model": str(model),
        "metrics": dict(metrics), "provenance": dict(provenance or {}),
    }


def write_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (see ``metrics_record``) to ``run_dir/metrics.json``."""
    record = metrics_record(
        record["task"], record["method"], record["model"], record["metrics"], record.get("provenance")
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
    record = metrics_record(data["task"], data["method"], data["model"], data["metrics"], data.get("provenance"))
    return RunRecord(run=run_dir.name, **record)


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


def markdown_table(
    runs: Sequence[RunRecord], columns: Sequence[str] | None = None, percent: bool = True, digits: int = 1
) -> str:
    """A GitHub-markdown table, one row per run; fractions x100 when ``percent``."""
    header, rows = comparison_rows(runs, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(c, row[c], percent, digits) for c in header) + " |")
    return "\n".join(lines) + "\n"


def write_csv(runs: Sequence[RunRecord], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """The comparison as CSV with raw values (empty cell where a metric is absent)."""
    header, rows = comparison_rows(runs, columns)
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
