"""Per-sample count tables of a finished run, read back from the files every run already stores.

The bootstrap and the paired tests (``stats``) work on one row of counts per sample, whose column sums give the
corpus metrics. They are rebuilt from what ``vlm-attn eval`` writes, so runs made before intervals existed can be
reported and compared too:

- CHAIR: ``chair_details.json`` (one entry per scored caption): captions 1, hallucinated caption 0/1, mentions,
  hallucinated mentions, ground-truth objects, covered ground-truth objects (distinct mentioned objects in the
  ground truth), distinct mentioned objects, tokens; one stratum ``"all"`` of images;
- POPE: ``samples.jsonl`` (one record per question: split, question_id, label, output) and the parse mode recorded
  in ``metrics.json``; each answer is scored by ``pope.pope_metrics`` alone (so every parse mode is handled as the
  run scored it) into n 1 and a one-hot TP/FP/TN/FN; one stratum per split.

``check_against`` confirms that the tables reproduce the run's recorded metrics before any interval is trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import pope
from ..errors import UserError
from .runner import MERGED_FILE, read_records
from .stats import CHAIR_COLUMNS, POPE_COLUMNS, chair_statistic, pope_statistic

CHAIR_DETAILS_FILE = "chair_details.json"  # as written by tasks.execute_chair
CHAIR_STRATUM = "all"
TOLERANCE = 1e-9


@dataclass(frozen=True)
class SampleTable:
    """The per-sample counts of one run.

    Attributes:
        task: "chair" or "pope".
        ids: stratum -> sample ids in row order (CHAIR: image ids as text; POPE: "<split>/<question_id>").
        counts: stratum -> (n, k) counts (``stats.CHAIR_COLUMNS`` / ``stats.POPE_COLUMNS``).
        correct: POPE: stratum -> whether each answer matched its label (McNemar); empty for CHAIR.
        source: the file the table was read from.
    """

    task: str
    ids: Mapping[str, tuple[str, ...]]
    counts: Mapping[str, np.ndarray]
    correct: Mapping[str, np.ndarray]
    source: str

    @property
    def statistic(self) -> Any:
        return chair_statistic if self.task == "chair" else pope_statistic

    @property
    def average(self) -> str | None:
        """The name of the across-strata mean the task reports ("average" for POPE), or None."""
        return "average" if self.task == "pope" else None

    def sample_ids(self) -> set[str]:
        return {i for ids in self.ids.values() for i in ids}

    def aligned_to(self, order: Mapping[str, Sequence[str]]) -> "SampleTable":
        """The same table with its rows in ``order`` (stratum -> ids; the same id set, checked by the caller)."""
        ids, counts, correct = {}, {}, {}
        for name, wanted in order.items():
            index = {sample: row for row, sample in enumerate(self.ids[name])}
            rows = [index[s] for s in wanted]
            ids[name] = tuple(wanted)
            counts[name] = self.counts[name][rows]
            if name in self.correct:
                correct[name] = self.correct[name][rows]
        return SampleTable(self.task, ids, counts, correct, self.source)


def chair_table(details: Mapping[str, Any], source: str = CHAIR_DETAILS_FILE) -> SampleTable:
    """The CHAIR table from a ``chair_details.json`` document (``{"captions": [...]}``)."""
    captions = details.get("captions") if isinstance(details, Mapping) else None
    if not isinstance(captions, list) or not captions:
        raise UserError(f"{source}: no per-caption entries; rescore the run with `vlm-attn eval chair ... --resume`")
    rows, ids = [], []
    for c in captions:
        mentioned = set(c["mentioned_objects"])
        gt = set(c["gt_objects"])
        row = {
            "captions": 1, "hallucinated_captions": int(bool(c["hallucinated"])),
            "mentions": len(c["mentioned_words"]), "hallucinated_mentions": len(c["hallucinated"]),
            "gt_objects": len(gt), "covered_gt_objects": len(mentioned & gt),
            "distinct_mentioned_objects": len(mentioned), "tokens": c["n_tokens"],
        }
        rows.append([row[k] for k in CHAIR_COLUMNS])
        ids.append(str(c["image_id"]))
    return SampleTable("chair", {CHAIR_STRATUM: tuple(ids)}, {CHAIR_STRATUM: np.array(rows, dtype=float)}, {},
                       source)


def pope_table(records: Sequence[Mapping[str, Any]], mode: str, source: str = MERGED_FILE) -> SampleTable:
    """The POPE table of merged sample records (those with an error are left out, as the metrics leave them)."""
    ids: dict[str, list[str]] = {}
    rows: dict[str, list[list[int]]] = {}
    correct: dict[str, list[bool]] = {}
    for r in records:
        if "error" in r:
            continue
        split = str(r["split"])
        one = pope.pope_metrics([r["label"]], [r["output"]], mode)
        rows.setdefault(split, []).append([one[k] for k in POPE_COLUMNS])
        ids.setdefault(split, []).append(f"{split}/{r['question_id']}")
        correct.setdefault(split, []).append(bool(one["tp"] or one["tn"]))
    if not rows:
        raise UserError(f"{source}: no answered questions; finish the run with `vlm-attn eval pope ... --resume`")
    return SampleTable(
        "pope", {s: tuple(v) for s, v in ids.items()}, {s: np.array(v, dtype=float) for s, v in rows.items()},
        {s: np.array(v, dtype=bool) for s, v in correct.items()}, source,
    )


def load_table(run_dir: str | Path, record: Mapping[str, Any]) -> SampleTable:
    """The table of a finished run (``record`` is its metrics.json document), checked against its metrics."""
    run_dir = Path(run_dir)
    if record["task"] == "chair":
        path = run_dir / CHAIR_DETAILS_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {CHAIR_DETAILS_FILE} (per-caption detail) to resample; rescore the run "
                            "with `vlm-attn eval chair ... --resume`")
        try:
            details = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); rescore the run with "
                            "`vlm-attn eval chair ... --resume`") from None
        table = chair_table(details, str(path))
    else:
        path = run_dir / MERGED_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {MERGED_FILE} (per-question answers) to resample; finish the run with "
                            "`vlm-attn eval pope ... --resume`")
        mode = record.get("provenance", {}).get("parse_mode", "official")
        table = pope_table(read_records(path), mode, str(path))
    check_against(table, record["metrics"], str(run_dir))
    return table


def point_metrics(table: SampleTable) -> dict[str, dict[str, float]]:
    """Stratum -> metric -> value on all rows (plus the POPE average)."""
    points = {name: {m: float(v) for m, v in table.statistic(c.sum(axis=0)).items()}
              for name, c in table.counts.items()}
    if table.average is not None:
        values = list(points.values())
        points[table.average] = {m: sum(v[m] for v in values) / len(values) for m in values[0]}
    return points


def check_against(table: SampleTable, metrics: Mapping[str, Any], where: str) -> None:
    """Raise UserError when the per-sample table does not give the run's recorded metrics (files edited or
    mixed up, or a parse mode this version does not score the same way)."""
    for stratum, values in point_metrics(table).items():
        recorded = metrics if table.task == "chair" else metrics.get(stratum, {})
        for name, value in values.items():
            want = recorded.get(name) if isinstance(recorded, Mapping) else None
            if not isinstance(want, (int, float)) or abs(want - value) > TOLERANCE:
                label = name if table.task == "chair" else f"{stratum}.{name}"
                raise UserError(f"{where}: the per-sample records give {label} = {value!r} but metrics.json has "
                                f"{want!r}; the run's files disagree, rescore it with `vlm-attn eval ... --resume`")
