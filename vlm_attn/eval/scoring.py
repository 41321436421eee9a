"""Score outputs generated elsewhere (``vlm-attn score``) into a result folder that ``vlm-attn report`` reads.

``score_caption_file`` and ``score_answer_files`` turn another tool's file into the per-sample records that
``vlm-attn eval`` writes (``external``), check everything first (the file, the ground truth or questions, the ids,
the image list), then score with the functions our own runs use (``tasks.score_chair`` / ``tasks.score_pope``),
so a file gives exactly the metrics of the same outputs generated here. The folder gets what an eval run folder
holds: ``samples.jsonl`` (the records), ``metrics.json`` (with the scored file's sha256, row count and format,
the ground truth's version and hashes, the parse mode or lemmatiser, package versions, times and the command
line), and for CHAIR ``chair_details.json`` and ``image_list.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from . import external
from . import pope as pope_lib
from .chair import CHAIR
from .chair_hf import load_chair_hf
from .coco import coco_val2014, image_ids as coco_image_ids, read_image_list
from .report import metrics_record, recorded_intervals, write_metrics
from .runner import MERGED_FILE, RunDir
from .tasks import (
    CHAIR_DETAILS_FILE,
    CHAIR_TASK,
    IMAGE_LIST_FILE,
    POPE_TASK,
    check_chair_source,
    coco_dataset_record,
    file_sha256,
    package_versions,
    score_chair,
    score_pope,
)

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "external"


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """What names the result and how it was asked for (``command`` defaults to ``sys.argv``)."""

    method: str = DEFAULT_METHOD
    model: str | None = None
    progress: bool = True
    command: Sequence[str] | None = None
    arguments: Mapping[str, Any] | None = None


def check_out(out: str | Path) -> Path:
    """The result folder must be new or empty (as for eval runs): refused before any file is read."""
    RunDir(out).check({}, resume=False)
    return Path(out)


def _model_of(files: Sequence[external.OutputFile], given: str | None) -> str:
    """``given``, else the one ``model_id`` the rows carry (LLaVA/VCD answer files do), else "unknown"."""
    if given:
        return given
    names = {str(row["model_id"]) for f in files for _, row in f.rows if "model_id" in row}
    return names.pop() if len(names) == 1 else "unknown"


def _write(out: Path, task: str, records: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
           provenance: Mapping[str, Any], options: ScoreOptions, model: str,
           extra_files: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the result folder: samples.jsonl, the extra JSON files, metrics.json (returned)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / MERGED_FILE, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for name, content in (extra_files or {}).items():
        (out / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    full = {
        "source": "score",
        **provenance,
        "n_samples": len(records),
        "versions": package_versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(options.command) if options.command is not None else list(sys.argv),
        "arguments": dict(options.arguments or {}),
    }
    record = metrics_record(task, options.method, model, json.loads(json.dumps(metrics, default=str)),
                            json.loads(json.dumps(full, default=str)))
    record["intervals"] = recorded_intervals(out, record, options.progress)  # from the files just written
    write_metrics(out, record)
    logger.info("wrote %s", out / "metrics.json")
    return record


# ----------------------------------------------------------------------------------------------- CHAIR

def score_caption_file(
    captions: str | Path,
    out: str | Path,
    coco_root: str | Path | None = None,
    hf_dataset: str | None = None,
    hf_split: str = "test",
    image_list: str | Path | None = None,
    lemmatizer: str = "auto",
    image_key: str = "image_id",
    caption_key: str = "caption",
    options: ScoreOptions = ScoreOptions(),
) -> dict[str, Any]:
    """CHAIR of a caption file (``external`` formats) against a COCO root or the HF copy; writes ``out``.

    Checked before any scoring: ``out`` new or empty, one ground truth, the file (empty, bad JSON, missing keys,
    bad or repeated ids: one line naming the line), every image id known to the ground truth, and with
    ``image_list`` every listed image captioned (then only the listed images are scored, in list order).
    """
    check_chair_source(coco_root, hf_dataset)
    out = check_out(out)
    file = external.read_output_file(captions, "caption", external.CAPTION_EXAMPLE)
    records = external.caption_records(file, image_key, caption_key)
    instances = captions_json = None
    if hf_dataset is not None:
        truth = load_chair_hf(hf_dataset, hf_split)
        known: Any = truth.objects
        source = f"the CHAIR dataset {hf_dataset}"
        dataset = dict(truth.provenance)
    else:
        coco = coco_val2014(coco_root)  # type: ignore[arg-type]
        for path in (coco.instances_path, coco.captions_path):
            if not path.is_file():
                raise FileNotFoundError(f"COCO file not found: {path}; download annotations_trainval2014.zip from "
                                        f"cocodataset.org and unzip it into {coco.root}")
        instances = coco.load_instances()
        known = set(coco_image_ids(instances))
        source = str(coco.instances_path)
        dataset = coco_dataset_record(coco)
    external.check_images_known(file, records, known, source)
    list_info: dict[str, Any] = {"source": "the caption file", "path": str(file.path)}
    if image_list is not None:
        listed = [image_id for _, image_id in read_image_list(image_list)]
        records = external.restrict_to_list(file, records, listed, image_list)
        list_info = {"source": str(image_list), "sha256": file_sha256(image_list)}
    ids = [r["image_id"] for r in records]
    if hf_dataset is not None:
        evaluator = CHAIR(ground_truth={i: truth.objects[i] for i in ids}, lemmatizer=lemmatizer)
    else:
        captions_json = coco.load_captions()
        evaluator = CHAIR.from_coco(instances, captions_json, image_ids=ids, lemmatizer=lemmatizer)
    metrics, details = score_chair(records, evaluator, progress=options.progress)
    image_info = {**list_info, "image_ids": ids}
    provenance = {
        "scored_file": file.provenance(),
        "keys": {"image": image_key, "caption": caption_key},
        "dataset": dataset,
        "image_list": image_info,
        "image_list_file": IMAGE_LIST_FILE,
        "lemmatizer": evaluator.lemmatizer_name,
        "task": dataclasses.asdict(CHAIR_TASK),
    }
    return _write(out, "chair", records, metrics, provenance, options, _model_of([file], options.model),
                  {CHAIR_DETAILS_FILE: details, IMAGE_LIST_FILE: image_info})


# ----------------------------------------------------------------------------------------------- POPE

def answer_file_splits(answers: Sequence[str | Path], split: str | None) -> list[tuple[str, Path]]:
    """(split, file) per answer file: ``split`` for a single file, else read from each name (``..._popular...``);
    a name without a split, or two files of one split, raise UserError."""
    if not answers:
        raise UserError("no answer file; pass --answers FILE (once per split)")
    if split is not None:
        if len(answers) > 1:
            raise UserError(f"--split names the split of one answer file, but {len(answers)} were given; name each "
                            "file after its split (..._random..., ..._popular..., ..._adversarial...) instead")
        if split not in pope_lib.SPLITS:
            raise UserError(f"--split: unknown split {split!r}; choose from {', '.join(pope_lib.SPLITS)}")
        return [(split, Path(answers[0]))]
    pairs: dict[str, Path] = {}
    for path in map(Path, answers):
        name = external.split_of_answer_file(path)
        if name is None:
            raise UserError(f"--answers {path}: no split (random, popular, adversarial) in the file name; pass "
                            "--split NAME for a single file")
        if name in pairs:
            raise UserError(f"--answers {path} and {pairs[name]} are both split {name!r}; pass one file per split")
        pairs[name] = path
    return list(pairs.items())


def score_answer_files(
    answers: Sequence[str | Path],
    out: str | Path,
    splits: Mapping[str, pope_lib.PopeSplit] | None = None,
    split: str | None = None,
    parse_mode: str = "official",
    answer_key: str | None = None,
    options: ScoreOptions = ScoreOptions(),
) -> dict[str, Any]:
    """POPE metrics of answer files (``external`` formats) against the question files in ``splits`` (or, without
    them, the questions and labels the answers carry); writes ``out``.

    Checked before scoring: ``out`` new or empty, the parse mode, each file (empty, bad JSON, missing keys), every
    question id known to its split's questions, labels and question texts agreeing with them.
    """
    if parse_mode not in pope_lib.PARSE_MODES:
        raise UserError(f"--parse must be one of {', '.join(pope_lib.PARSE_MODES)}, not {parse_mode!r}")
    out = check_out(out)
    pairs = answer_file_splits(answers, split)
    files = {name: external.read_output_file(path, "answer", external.ANSWER_EXAMPLE) for name, path in pairs}
    used: dict[str, pope_lib.PopeSplit] = {}
    records: list[dict[str, Any]] = []
    for name, file in files.items():
        if splits is None:
            used[name] = external.split_from_answers(file, name, answer_key)
        elif name in splits:
            used[name] = splits[name]
        else:
            raise UserError(f"{file.path}: split {name!r} has no question file (loaded: {', '.join(splits)}); pass "
                            f"its questions with --pope-file or --pope-dir")
        records.extend(external.answer_records(file, used[name], answer_key))
    metrics = score_pope(records, used, parse_mode)
    provenance = {
        "scored_file": {name: file.provenance() for name, file in files.items()},
        "dataset": {name: s.provenance for name, s in used.items()},
        "parse_mode": parse_mode,
        "answer_key": answer_key or " or ".join(external.ANSWER_KEYS),
        "image_list": sorted({str(r["image"]) for r in records}),
        "task": dataclasses.asdict(POPE_TASK),
    }
    return _write(out, "pope", records, metrics, provenance, options, _model_of(list(files.values()), options.model))
