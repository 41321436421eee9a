"""Score outputs that other tools generated: caption files for CHAIR, answer files for POPE.

Formats read (JSON lines, or one JSON list of the same objects; "line N" / "item N" name a bad row):

- captions (OPERA's ``chair_eval.py`` writes ``{"image_id": 226988, "caption": "..."}`` per line; COCO's result
  format is a JSON list of the same objects; the CHAIR script's own result file, ``{"overall_metrics": ...,
  "sentences": [{"image_id", "caption", ...}]}``, re-scores as well): ``image_id`` is an id or a COCO file name,
  ``caption`` the text (other key names with ``image_key`` / ``caption_key``);
- POPE answers (POPE's own scripts write ``{"question", "answer"}``, LLaVA's and VCD's ``{"question_id", "prompt",
  "text", ...}``): the answer text is ``text`` when the row has it, else ``answer``; rows are matched to the
  questions by ``question_id`` when they carry one, else by position (then a ``question`` field, when present,
  must equal the question it is matched with); a ``label`` field must agree with the question file. Without a
  question file every row needs ``question`` and ``label`` and the questions are taken from the answers.

Both become the per-sample records ``vlm-attn eval`` writes to ``samples.jsonl`` (``{"id", "image_id",
"output"}`` for CHAIR; ``{"id", "split", "question_id", "image", "label", "question", "output"}`` for POPE), so
they are scored by the same functions (``tasks.score_chair`` / ``tasks.score_pope``) as our own runs, and a
file gives exactly the metrics of the same outputs generated here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from . import pope as pope_lib
from .coco import image_id_of

logger = logging.getLogger(__name__)

ANSWER_KEYS: tuple[str, ...] = ("text", "answer")


@dataclass(frozen=True)
class OutputFile:
    """A parsed output file: its rows with where each stands, and what identifies the file."""

    path: Path
    sha256: str
    n_lines: int
    format: str
    rows: tuple[tuple[str, Mapping[str, Any]], ...]

    def provenance(self) -> dict[str, Any]:
        """What the result records about the scored file."""
        return {"path": str(self.path), "sha256": self.sha256, "n_lines": self.n_lines, "format": self.format,
                "n_rows": len(self.rows)}


def read_output_file(path: str | Path, what: str, example: str) -> OutputFile:
    """Rows of a JSONL file (or a JSON list); an empty file, bad JSON or a non-object row raises UserError naming
    the line. ``what`` and ``example`` describe the expected rows in the messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); pass the {what} file as JSON "
                        "lines") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; pass the {what} file the tool wrote (one object such as "
                        f"{example} per line)")
    located: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        fmt = "json"
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix the file "
                            f"(a JSON list of objects such as {example})") from None
        located = [(f"item {i}", v) for i, v in enumerate(values, 1)]
    elif text.lstrip().startswith("{") and _chair_results(text) is not None:
        fmt = "chair-results"
        located = [(f"sentence {i}", v) for i, v in enumerate(_chair_results(text) or [], 1)]
    else:
        fmt = "jsonl"
        located = pope_lib.jsonl_rows(path, text, f"one object such as {example}")
    if not located:
        raise UserError(f"{path}: no {what} rows; the file holds an empty list")
    for where, row in located:
        if not isinstance(row, Mapping):
            raise UserError(f"{path} {where}: expected a JSON object such as {example}, got {type(row).__name__}")
    return OutputFile(path=path, sha256=hashlib.sha256(raw).hexdigest(), n_lines=len(text.splitlines()),
                      format=fmt, rows=tuple(located))


def _chair_results(text: str) -> list[Any] | None:
    """The ``sentences`` of a CHAIR script's result file (one JSON object with ``overall_metrics`` and
    ``sentences``: ``{image_id, caption, ...}`` per scored caption), or None for anything else."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None  # JSON lines
    if isinstance(data, Mapping) and isinstance(data.get("sentences"), list):
        return data["sentences"]
    return None


def _unknown_message(path: Path, kind: str, unknown: Sequence[Any], total: int, source: str, fix: str) -> str:
    shown = ", ".join(map(str, list(unknown)[:5])) + (", ..." if len(unknown) > 5 else "")
    return f"{path}: {len(unknown)} of {total} {kind} are not in {source} (e.g. {shown}); {fix}"


# ----------------------------------------------------------------------------------------------- CHAIR

CAPTION_EXAMPLE = '{"image_id": 42, "caption": "A dog on a bench."}'


def caption_records(file: OutputFile, image_key: str = "image_id", caption_key: str = "caption"
                    ) -> list[dict[str, Any]]:
    """One ``{"id", "image_id", "output"}`` record per caption row, in file order (ids checked, each image once)."""
    records: list[dict[str, Any]] = []
    first_seen: dict[int, str] = {}
    for where, row in file.rows:
        for key in (image_key, caption_key):
            if key not in row:
                raise UserError(f"{file.path} {where}: missing field {key!r} (the row has {sorted(row)}); each row "
                                f"needs {image_key} and {caption_key} (other names: --image-key, --caption-key)")
        image_id = image_id_of(row[image_key])
        if image_id is None:
            raise UserError(f"{file.path} {where}: {image_key} {row[image_key]!r} is not a COCO image id or file name")
        caption = row[caption_key]
        if not isinstance(caption, str):
            raise UserError(f"{file.path} {where}: {caption_key} must be a string, got {type(caption).__name__}")
        if image_id in first_seen:
            raise UserError(f"{file.path} {where}: image {image_id} repeats {first_seen[image_id]}; keep one caption "
                            "per image")
        first_seen[image_id] = where
        records.append({"id": str(image_id), "image_id": image_id, "output": caption})
    return records


def check_images_known(file: OutputFile, records: Sequence[Mapping[str, Any]], known: Any, source: str) -> None:
    """Refuse captions of images that have no CHAIR ground truth in ``source`` (count, examples and the fix)."""
    unknown = [r["image_id"] for r in records if r["image_id"] not in known]
    if unknown:
        raise UserError(_unknown_message(
            file.path, "image ids", unknown, len(records), source,
            "score against the images the captions were made for (COCO val2014 annotations with --coco-root, the HF "
            "copy with --hf-dataset) or remove those lines"))


def restrict_to_list(file: OutputFile, records: Sequence[dict[str, Any]], image_ids: Sequence[int],
                     list_path: str | Path) -> list[dict[str, Any]]:
    """The records of the listed images, in list order; a listed image without a caption raises UserError."""
    by_id = {r["image_id"]: r for r in records}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise UserError(_unknown_message(file.path, "listed images", missing, len(image_ids),
                                         f"the caption file (listed in {list_path})",
                                         "caption them too, or pass the list the file was made for"))
    return [by_id[i] for i in image_ids]


# ----------------------------------------------------------------------------------------------- POPE

ANSWER_EXAMPLE = '{"question_id": 1, "text": "Yes"}'


def _answer_text(file: OutputFile, where: str, row: Mapping[str, Any], answer_key: str | None) -> str:
    keys = (answer_key,) if answer_key else ANSWER_KEYS
    key = next((k for k in keys if k in row), None)
    if key is None:
        raise UserError(f"{file.path} {where}: no answer field {' or '.join(map(repr, keys))} (the row has "
                        f"{sorted(row)}); name it with --answer-key")
    if not isinstance(row[key], str):
        raise UserError(f"{file.path} {where}: {key!r} must be a string, got {type(row[key]).__name__}")
    return row[key]


def _label(file: OutputFile, where: str, row: Mapping[str, Any]) -> str | None:
    if "label" not in row:
        return None
    label = str(row["label"]).strip().lower()
    if label not in pope_lib.LABELS:
        raise UserError(f"{file.path} {where}: label {row['label']!r} is not one of yes/no; fix the label")
    return label


def split_from_answers(file: OutputFile, name: str, answer_key: str | None = None) -> pope_lib.PopeSplit:
    """Questions taken from an answer file whose rows carry ``question`` and ``label`` (no question file)."""
    questions = []
    for index, (where, row) in enumerate(file.rows, 1):
        label = _label(file, where, row)
        if label is None or not isinstance(row.get("question"), str):
            raise UserError(f"{file.path} {where}: without a question file every row needs 'question' and 'label'; "
                            "pass the questions with --pope-file or --pope-dir")
        _answer_text(file, where, row, answer_key)
        qid = row.get("question_id", index)
        questions.append(pope_lib.PopeQuestion(question_id=qid, image=str(row.get("image", "")), text=row["question"],
                                               label=label))
    ids = [str(q.question_id) for q in questions]
    if len(set(ids)) < len(ids):
        raise UserError(f"{file.path}: question ids repeat; each question must appear once")
    provenance = {"source": "answers", "path": str(file.path), "split": name, "sha256": file.sha256,
                  "content_sha256": pope_lib.content_sha256(questions), "n_questions": len(questions),
                  "n_yes": sum(q.label == "yes" for q in questions), "version": pope_lib.version_note(len(questions))}
    return pope_lib.PopeSplit(name=name, questions=tuple(questions), provenance=provenance)


def answer_records(file: OutputFile, split: pope_lib.PopeSplit, answer_key: str | None = None
                   ) -> list[dict[str, Any]]:
    """The eval records of one split's answer file, matched to ``split``'s questions (see the module docstring)."""
    questions = split.questions
    source = split.provenance.get("path", split.name)
    by_id = {str(q.question_id): q for q in questions}
    with_ids = [("question_id" in row) for _, row in file.rows]
    if any(with_ids) and not all(with_ids):
        where = file.rows[with_ids.index(False)][0]
        raise UserError(f"{file.path} {where}: no question_id while other rows have one; give every row its "
                        "question_id (or none, to match by position)")
    matched: list[tuple[str, Mapping[str, Any], pope_lib.PopeQuestion]] = []
    if all(with_ids):
        unknown = [row["question_id"] for _, row in file.rows if str(row["question_id"]) not in by_id]
        if unknown:
            raise UserError(_unknown_message(file.path, "question ids", unknown, len(file.rows),
                                             f"{source} (split {split.name})",
                                             "score against the question file the answers were made for"))
        seen: dict[str, str] = {}
        for where, row in file.rows:
            key = str(row["question_id"])
            if key in seen:
                raise UserError(f"{file.path} {where}: question_id {row['question_id']!r} repeats {seen[key]}; keep "
                                "one answer per question")
            seen[key] = where
            matched.append((where, row, by_id[key]))
    else:
        if len(file.rows) > len(questions):
            raise UserError(f"{file.path}: {len(file.rows)} answers but {source} has {len(questions)} questions; "
                            "score against the question file the answers were made for")
        matched = [(where, row, q) for (where, row), q in zip(file.rows, questions)]
    records = []
    for where, row, q in matched:
        asked = row.get("question")
        if isinstance(asked, str) and asked.strip() != q.text.strip():
            raise UserError(f"{file.path} {where}: question {asked!r} is not {q.text!r} (question {q.question_id} of "
                            f"{source}); the answers are for other questions or in another order (add question_id)")
        label = _label(file, where, row)
        if label is not None and label != q.label:
            raise UserError(f"{file.path} {where}: label {label!r} but {source} labels question {q.question_id} "
                            f"{q.label!r}; score against the question file the answers were made for")
        records.append({"id": f"{split.name}/{q.question_id}", "split": split.name, "question_id": q.question_id,
                        "image": q.image, "label": q.label, "question": q.text,
                        "output": _answer_text(file, where, row, answer_key)})
    if len(records) < len(questions):
        logger.warning("%s: %d of %d questions of split %s answered; scoring those", file.path, len(records),
                       len(questions), split.name)
    return records


def split_of_answer_file(path: str | Path) -> str | None:
    """The POPE split named in an answer file's name (``..._pope_popular_answers.jsonl`` -> "popular"), or None."""
    match = re.search(r"(random|popular|adversarial)", Path(path).name)
    return match.group(1) if match else None
