"""POPE (Li et al. 2023): question loading, answer parsing and yes/no metrics.

Sources:
- the standard JSONL files ``coco_pope_{random,popular,adversarial}.json(l)``, one ``{question_id, image, text,
  label}`` object per line. The current release has 3000 questions per split (1500 yes / 1500 no, 500 COCO
  val2014 images); an older 2910-question random split (with "imange" typos) was used by some papers. Every
  loaded split records the file's sha256 and which version it looks like, so results say what they ran on;
- the HF dataset ``lmms-lab/POPE`` (columns id, question_id, question, answer, image_source, category, image),
  through ``datasets`` (imported only when used).

Answer parsing modes:
- ``"official"`` (POPE's evaluate script, also LLaVA's eval_pope): keep the text before the first ``.``, drop
  ``,``, split on single spaces; the answer is "no" if a word is ``No``, ``not`` or ``no``, else "yes".
- ``"lmms-eval"`` (lmms-eval ``tasks/pope/utils.py``, checked against its source): the prediction is
  ``text.lower().strip()`` and must equal the label exactly; accuracy is the exact-match rate, precision counts
  only predictions equal to "yes" (TP: label yes, FP: label no), recall counts TP and FN = label yes and
  prediction exactly "no", so an answer such as "yes." or "there is a dog" is wrong for accuracy and ignored by
  precision and recall. lmms-eval's own "yes_ratio" is the share of *labels* that are yes (always 0.5 on the
  balanced files); here ``yes_ratio`` is always the share of *predictions* that are "yes", as the spec asks.
- ``"recorder"`` (the ``recorder`` function of OPERA's and HALC's ``pope_eval.py``): drop every ``.`` and ``,``,
  split on single spaces; "no" if a word is ``No``, ``not``, ``no`` or ``NO`` or ends in ``n't``, else "yes".
  Unlike the official rule it reads the whole answer, not only its first sentence.
- ``"vcd"`` (VCD's ``experiments/eval/eval_pope.py``): lower-case and strip, then a *substring* test against the
  label: a yes-question is a true positive when "yes" occurs anywhere in the answer (else a false negative), a
  no-question a true negative when "no" occurs anywhere (else a false positive). The prediction depends on the
  label, so "I do not know" counts as right on a no-question ("no" in "not", "know") and wrong on a yes-question.
Metrics treat "yes" as the positive class; every result records the mode that parsed it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from ..errors import UserError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
ParseMode = Literal["official", "lmms-eval", "recorder", "vcd"]
PARSE_MODES: tuple[str, ...] = ("official", "lmms-eval", "recorder", "vcd")
RECORDER_NEGATIONS = frozenset({"No", "not", "no", "NO"})
METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio")
HF_DATASET = "lmms-lab/POPE"
QUESTION_KEYS: tuple[str, ...] = ("question_id", "image", "text", "label")
LABELS: tuple[str, ...] = ("yes", "no")


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question; ``image`` is the COCO file name (JSONL) or the ``image_source`` value (HF)."""

    question_id: int | str
    image: str
    text: str
    label: str


@dataclass(frozen=True)
class PopeSplit:
    """The questions of one split plus where they came from.

    ``image_loader(i)`` returns the PIL image of question ``i`` for sources that carry images (HF); JSONL
    questions name a COCO val2014 file instead.
    """

    name: str
    questions: tuple[PopeQuestion, ...]
    provenance: dict[str, Any]
    image_loader: Callable[[int], Any] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def labels(self) -> list[str]:
        return [q.label for q in self.questions]


def version_note(n_questions: int) -> str:
    """Which POPE release a split of ``n_questions`` questions looks like."""
    if n_questions == 3000:
        return "standard-3000"
    if n_questions == 2910:
        return "legacy-2910"
    return f"nonstandard-{n_questions}"


def content_sha256(questions: Sequence[PopeQuestion]) -> str:
    """Hash of (question_id, text, label) in order: identical for the same questions from JSONL or HF."""
    digest = hashlib.sha256()
    for q in questions:
        digest.update(json.dumps([str(q.question_id), q.text, q.label]).encode() + b"\n")
    return digest.hexdigest()


def _split_name(path: Path) -> str:
    """The split a question file holds, from its name: ``coco_pope_random``, ``gqa_pope_seem_popular`` (the
    A-OKVQA and GQA files of VCD and others carry "seem", the segmenter that built them), else the stem."""
    match = re.search(r"pope_(?:seem_)?(random|popular|adversarial)", path.name)
    return match.group(1) if match else path.stem


def benchmark_name(path: str | Path) -> str:
    """Which POPE question set a file holds, from its name: "coco", "aokvqa", "gqa" (``<set>_pope_<split>``),
    else "unknown". A-OKVQA's questions name COCO val2014 files, GQA's name files of the GQA image folder."""
    match = re.search(r"(coco|aokvqa|a-okvqa|gqa)_pope_", Path(path).name.lower())
    return match.group(1).replace("-", "") if match else "unknown"


def _rows(path: Path, text: str) -> list[tuple[str, Any]]:
    """(where, parsed value) per question of a file: "line N" for JSONL, "item N" for a JSON array."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); a POPE "
                            "file is one JSON object per line (or one JSON array)") from None
        return [(f"item {i}", row) for i, row in enumerate(rows, 1)]
    return jsonl_rows(path, text, f"one object with {', '.join(QUESTION_KEYS)}")


def jsonl_rows(path: Path, text: str, needs: str) -> list[tuple[str, Any]]:
    """("line N", parsed value) per non-blank line of a JSON-lines file; a line that is not JSON is a one-line
    UserError naming the file, the line and what each line `needs`."""
    located = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            located.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number}: not valid JSON ({exc.msg}, column {exc.colno}); each line "
                            f"needs {needs}") from None
    return located


def _question(path: Path, where: str, row: Any) -> PopeQuestion:
    """One checked question: an object with every key, non-empty strings, a yes/no label."""
    need = f"each line needs {', '.join(QUESTION_KEYS)}"
    if not isinstance(row, Mapping):
        raise UserError(f"{path} {where}: expected a JSON object, got {type(row).__name__}; {need}")
    for key in QUESTION_KEYS:
        if key not in row:
            raise UserError(f"{path} {where}: missing key {key!r}; {need}")
    for key in ("image", "text"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise UserError(f"{path} {where}: {key!r} must be a non-empty string, got {row[key]!r}")
    if not isinstance(row["question_id"], (int, str)) or isinstance(row["question_id"], bool):
        raise UserError(f"{path} {where}: 'question_id' must be an integer or a string, got {row['question_id']!r}")
    label = str(row["label"]).strip().lower()
    if label not in LABELS:
        raise UserError(f"{path} {where}: label {row['label']!r} is not one of {'/'.join(LABELS)}; fix the label")
    return PopeQuestion(question_id=row["question_id"], image=row["image"], text=row["text"], label=label)


def load_pope_jsonl(path: str | Path, split: str | None = None) -> PopeSplit:
    """Read a POPE question file (JSONL; a JSON array is accepted too) with sha256 and version recorded.

    Every question is checked here, before any work: valid JSON, the keys ``question_id, image, text, label``,
    a yes/no label and unique question ids; a bad one raises UserError naming the file and the line.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); pass a POPE .jsonl file") from None
    located = _rows(path, text)
    if not located:
        raise UserError(f"{path}: no questions; a POPE file has one JSON object per line")
    questions = tuple(_question(path, where, row) for where, row in located)
    first_seen: dict[str, str] = {}
    for (where, _), q in zip(located, questions):
        key = str(q.question_id)
        if key in first_seen:
            raise UserError(f"{path} {where}: question_id {q.question_id!r} repeats {first_seen[key]}; question "
                            "ids must be unique within a file")
        first_seen[key] = where
    name = split or _split_name(path)
    provenance = {
        "source": "jsonl",
        "path": str(path),
        "benchmark": benchmark_name(path),
        "split": name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "content_sha256": content_sha256(questions),
        "n_questions": len(questions),
        "n_yes": sum(q.label == "yes" for q in questions),
        "version": version_note(len(questions)),
    }
    if provenance["version"] != "standard-3000":
        logger.warning("POPE %s: %d questions (%s), not the standard 3000", name, len(questions), provenance["version"])
    return PopeSplit(name=name, questions=questions, provenance=provenance)


def _split_file(directory: Path, split: str) -> Path:
    """The question file of ``split`` in ``directory``: ``coco_pope_<split>.jsonl``/``.json`` when present, else
    the one ``<set>_pope_[seem_]<split>.json[l]`` of another POPE set (A-OKVQA, GQA); two such files are refused."""
    candidates = [directory / f"coco_pope_{split}.{ext}" for ext in ("jsonl", "json")]
    found = next((p for p in candidates if p.exists()), None)
    if found is not None:
        return found
    others = sorted(p for p in directory.glob(f"*_pope_*{split}.json*")
                    if p.suffix in (".json", ".jsonl") and _split_name(p) == split)
    if len(others) > 1:
        raise UserError(f"--pope-dir {directory}: several question files of split {split!r} "
                        f"({', '.join(p.name for p in others)}); pass the one you mean with --pope-file")
    if not others:
        raise FileNotFoundError(f"POPE file for split {split!r} not found: tried {', '.join(map(str, candidates))} "
                                f"and {directory}/<set>_pope_[seem_]{split}.json[l]")
    return others[0]


def load_pope_dir(directory: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, PopeSplit]:
    """Load each split's question file from ``directory`` (``coco_pope_<split>.jsonl`` or ``.json``, or one
    ``aokvqa_pope_seem_<split>.json``-style file of another POPE set; see ``_split_file``)."""
    directory = Path(directory)
    return {split: load_pope_jsonl(_split_file(directory, split), split) for split in splits}


def pope_from_hf(
    dataset: Any, split: str, source: str = HF_DATASET, revision: str | None = None
) -> PopeSplit:
    """Turn an ``lmms-lab/POPE``-style ``datasets.Dataset`` into one split (rows whose ``category`` is ``split``).

    Columns are read without decoding images; ``image_loader(i)`` decodes question ``i``'s image on demand.
    """
    categories = dataset["category"]
    rows = [i for i, c in enumerate(categories) if c == split]
    if not rows:
        raise ValueError(f"no POPE rows with category {split!r} (found {sorted(set(categories))})")
    qids, texts = dataset["question_id"], dataset["question"]
    answers, sources = dataset["answer"], dataset["image_source"]
    questions = tuple(
        PopeQuestion(question_id=qids[i], image=str(sources[i]), text=texts[i], label=str(answers[i]).strip().lower())
        for i in rows
    )
    bad = next((i for i, q in zip(rows, questions) if q.label not in LABELS), None)
    if bad is not None:
        raise UserError(f"POPE dataset {source} row {bad}: answer {answers[bad]!r} is not one of {'/'.join(LABELS)}")
    provenance = {
        "source": "hf",
        "dataset": source,
        "split": split,
        "revision": revision,
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "content_sha256": content_sha256(questions),
        "n_questions": len(questions),
        "n_yes": sum(q.label == "yes" for q in questions),
        "version": version_note(len(questions)),
    }
    return PopeSplit(
        name=split, questions=questions, provenance=provenance,
        image_loader=lambda k: dataset[rows[k]]["image"],
    )


def load_pope_hf(
    split: str, dataset: str = HF_DATASET, hf_split: str = "test", revision: str | None = None, **kwargs: Any
) -> PopeSplit:
    """Load one POPE split from the HF hub (needs ``pip install datasets`` and network or a warm cache)."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "loading POPE from the HF hub needs the `datasets` package: pip install datasets "
            "(or pip install 'vlm-attn[eval]'); the JSONL files work without it"
        ) from exc
    ds = datasets.load_dataset(dataset, split=hf_split, revision=revision, **kwargs)
    return pope_from_hf(ds, split, source=dataset, revision=revision)


def parse_answer_official(text: str) -> str:
    """POPE's official parsing: "no" if a word of the first sentence is No/not/no, else "yes"."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def parse_answer_lmms_eval(text: str) -> str:
    """lmms-eval's normalisation: lower-case and strip (the result is compared with the label as is)."""
    return text.lower().strip()


def parse_answer_recorder(text: str) -> str:
    """OPERA's and HALC's ``recorder``: "no" if a word (after dropping ``.`` and ``,``) is No/not/no/NO or ends in
    n't, else "yes"."""
    words = text.replace(".", "").replace(",", "").split(" ")
    return "no" if any(w in RECORDER_NEGATIONS or w.endswith("n't") for w in words) else "yes"


def parse_answer_vcd(text: str, label: str) -> str:
    """VCD's substring rule: the label when it occurs in the lower-cased answer, else the other answer."""
    return label if label in text.lower().strip() else ("no" if label == "yes" else "yes")


def parse_answer(text: str, mode: ParseMode | str = "official", label: str | None = None) -> str:
    """Normalise a model answer with the chosen mode (see the module docstring); "vcd" also needs the label."""
    if mode == "official":
        return parse_answer_official(text)
    if mode == "lmms-eval":
        return parse_answer_lmms_eval(text)
    if mode == "recorder":
        return parse_answer_recorder(text)
    if mode == "vcd":
        if label is None:
            raise ValueError("the vcd parse mode compares the answer with its label: pass label='yes' or 'no'")
        return parse_answer_vcd(text, label)
    raise ValueError(f"POPE parse mode must be one of {PARSE_MODES}, not {mode!r}")


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def pope_metrics(labels: Sequence[str], answers: Sequence[str], mode: ParseMode | str = "official") -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (yes = positive), yes_ratio of predictions, and the confusion counts.

    ``unparsed`` counts predictions that are neither "yes" nor "no" (possible only in "lmms-eval" mode).
    """
    if len(labels) != len(answers):
        raise ValueError(f"{len(labels)} labels but {len(answers)} answers")
    if not labels:
        raise ValueError("POPE metrics need at least one answer")
    gold = [label.strip().lower() for label in labels]
    bad = sorted({g for g in gold if g not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be yes/no, found {bad}")
    preds = [parse_answer(a, mode, g) for a, g in zip(answers, gold)]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, gold))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, gold))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, gold))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": (tp + tn) / len(gold),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": sum(p == "yes" for p in preds) / len(preds),
        "n": len(gold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "unparsed": sum(p not in ("yes", "no") for p in preds),
    }


def score_split(
    split: PopeSplit, answers: Mapping[Any, str] | Sequence[str], mode: ParseMode | str = "official"
) -> dict[str, Any]:
    """Metrics of one split; ``answers`` is a list in question order or a mapping question_id -> answer."""
    if isinstance(answers, Mapping):
        missing = [q.question_id for q in split.questions if q.question_id not in answers]
        if missing:
            raise KeyError(f"POPE {split.name}: no answer for {len(missing)} questions, e.g. {missing[:5]}")
        ordered = [answers[q.question_id] for q in split.questions]
    else:
        ordered = list(answers)
    return pope_metrics(split.labels, ordered, mode)


def average_splits(per_split: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean of each metric across splits; counts are summed."""
    if not per_split:
        raise ValueError("no POPE splits to average")
    values = list(per_split.values())
    result: dict[str, Any] = {m: sum(v[m] for v in values) / len(values) for m in METRIC_NAMES}
    for count in ("n", "tp", "fp", "tn", "fn", "unparsed"):
        result[count] = sum(v[count] for v in values)
    return result


def evaluate_pope(
    splits: Mapping[str, PopeSplit],
    answers: Mapping[str, Mapping[Any, str] | Sequence[str]],
    mode: ParseMode | str = "official",
) -> dict[str, dict[str, Any]]:
    """``{split: metrics, ..., "average": metrics}`` for every split that has answers."""
    per_split = {name: score_split(splits[name], answers[name], mode) for name in splits if name in answers}
    return {**per_split, "average": average_splits(per_split)}
