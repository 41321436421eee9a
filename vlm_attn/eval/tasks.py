"""The evaluation tasks as data (prompt, generation length, scorer) and the functions that run them end to end.

``run_chair`` and ``run_pope`` build the samples of a benchmark, generate them with ``runner.run_samples``
(resumable, sharded across ``accelerate launch`` processes), score the merged records with ``chair`` / ``pope``
and write ``metrics.json`` (schema in ``report``) with the provenance needed to reproduce the number: model id and
revision, method configs, dataset file hashes, the image list, seed, package versions, times and command line.

Prompts follow the papers' protocols (SPEC §7): CHAIR asks "Please describe this image in detail." with greedy
decoding and 512 new tokens (64 as the short variant); POPE appends LLaVA's short-answer instruction
("Answer the question using a single word or phrase.", as in LLaVA's eval_pope / lmms-eval) to each question.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import pope as pope_lib
from .chair import CHAIR
from .chair_hf import ChairGroundTruth, load_chair_hf
from .coco import (
    DEFAULT_CHAIR_IMAGES,
    CocoVal2014,
    coco_val2014,
    image_ids as coco_image_ids,
    read_image_list,
    sample_image_ids,
)
from ..errors import UserError
from .report import metrics_record, recorded_intervals, write_metrics
from .runner import RUN_FILE, Decoding, DistContext, Sample, check_unique_ids, run_samples, samples_sha256

logger = logging.getLogger(__name__)

IMAGE_LIST_FILE = "image_list.json"
CHAIR_DETAILS_FILE = "chair_details.json"
VERSION_PACKAGES: tuple[str, ...] = ("vlm-attn", "torch", "transformers", "accelerate", "nltk", "datasets", "pillow")


@dataclass(frozen=True)
class Task:
    """A benchmark's generation protocol.

    Attributes:
        name: "chair" or "pope" (the ``task`` of metrics.json).
        prompt: the user text; for POPE a template with ``{question}``.
        max_new_tokens: the papers' default generation length.
        short_max_new_tokens: the short variant some papers also report (CHAIR 64), else None.
        scorer: what scores the outputs (for the record).
    """

    name: str
    prompt: str
    max_new_tokens: int
    scorer: str
    short_max_new_tokens: int | None = None


CHAIR_TASK = Task(
    name="chair", prompt="Please describe this image in detail.", max_new_tokens=512, short_max_new_tokens=64,
    scorer="vlm_attn.eval.chair.CHAIR (OPERA/PAI variant)",
)
POPE_TASK = Task(
    name="pope", prompt="{question}\nAnswer the question using a single word or phrase.", max_new_tokens=128,
    scorer="vlm_attn.eval.pope.evaluate_pope",
)
TASKS: dict[str, Task] = {t.name: t for t in (CHAIR_TASK, POPE_TASK)}


# ----------------------------------------------------------------------------------------------- samples

def chair_samples(coco: CocoVal2014 | None, image_ids: Sequence[int], prompt: str = CHAIR_TASK.prompt,
                  image_loader: Any = None) -> list[Sample]:
    """One captioning sample per COCO val2014 image (id = the image id as text): the file under ``coco``'s
    val2014 folder, or the picture ``image_loader(image_id)`` decodes (the HF copy of CHAIR)."""
    if coco is None and image_loader is None:
        raise ValueError("chair_samples needs a COCO root or an image loader")
    return [
        Sample(id=str(int(i)), prompt=prompt, meta={"image_id": int(i)},
               image=(_RowImage(image_loader, int(i)) if image_loader is not None
                      else coco.image_path(int(i), check=False)))  # type: ignore[union-attr]
        for i in image_ids
    ]


def pope_samples(
    splits: Mapping[str, pope_lib.PopeSplit],
    coco: CocoVal2014 | None = None,
    template: str = POPE_TASK.prompt,
    limit: int | None = None,
    image_root: str | Path | None = None,
) -> list[Sample]:
    """One sample per POPE question (id ``"<split>/<question_id>"``), the first ``limit`` of each split.

    Images come from the split's own loader (HF dataset), else from ``image_root`` (the folder the question
    file's ``image`` names are relative to: GQA's images, A-OKVQA's COCO val2014, ...), else from ``coco``'s
    val2014 folder (JSONL files).
    """
    samples = []
    for name, split in splits.items():
        questions = split.questions[:limit] if limit is not None else split.questions
        for index, q in enumerate(questions):
            if split.image_loader is not None:
                image: Any = _RowImage(split.image_loader, index)
            elif image_root is not None:
                image = Path(image_root) / q.image
            elif coco is not None:
                image = coco.image_dir / q.image
            else:
                raise UserError(f"POPE split {name!r} names image files ({q.image}); pass --coco-root (the folder "
                                "holding val2014/) or --image-root (the folder holding the files)")
            samples.append(Sample(
                id=f"{name}/{q.question_id}", prompt=template.format(question=q.text), image=image,
                meta={"split": name, "question_id": q.question_id, "image": q.image, "label": q.label,
                      "question": q.text},
            ))
    return samples


@dataclass(frozen=True)
class _RowImage:
    """Zero-argument callable decoding one dataset row's (or image id's) image on demand."""

    loader: Any
    index: int

    def __call__(self) -> Any:
        return self.loader(self.index)


# ----------------------------------------------------------------------------------------------- scoring

def split_errors(records: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(records with an output, records with an error)."""
    ok = [r for r in records if "error" not in r]
    return ok, [r for r in records if "error" in r]


def _require_outputs(ok: Sequence[Any], errors: Sequence[Mapping[str, Any]]) -> None:
    if not ok:
        first = errors[0]["error"] if errors else "no samples"
        raise RuntimeError(f"no sample produced an output ({len(errors)} errors, e.g. {first}); see samples.jsonl")


def score_chair(records: Sequence[Mapping[str, Any]], evaluator: CHAIR, progress: bool = False
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, per-caption details) over the records that have an output; errors are counted, not scored."""
    ok, errors = split_errors(records)
    _require_outputs(ok, errors)
    result = evaluator.evaluate(ok, caption_key="output", progress=progress)
    metrics = {**result.metrics, "n_scored": len(ok), "n_errors": len(errors)}
    return metrics, result.to_dict()


def score_pope(
    records: Sequence[Mapping[str, Any]], splits: Mapping[str, pope_lib.PopeSplit], mode: str = "official"
) -> dict[str, Any]:
    """POPE metrics per split (over the questions that were answered) and averaged; errors are counted."""
    ok, errors = split_errors(records)
    _require_outputs(ok, errors)
    answers: dict[str, dict[Any, str]] = {}
    for r in ok:
        answers.setdefault(r["split"], {})[r["question_id"]] = r["output"]
    answered = {
        name: dataclasses.replace(
            split, questions=tuple(q for q in split.questions if q.question_id in answers.get(name, {}))
        )
        for name, split in splits.items() if answers.get(name)
    }
    metrics: dict[str, Any] = pope_lib.evaluate_pope(answered, answers, mode)
    return {**metrics, "n_scored": len(ok), "n_errors": len(errors)}


# ----------------------------------------------------------------------------------------------- provenance

def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(packages: Sequence[str] = VERSION_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def method_name(configs: Sequence[Any]) -> str:
    """"baseline" without methods, else the configs' names joined by "+" (e.g. "var")."""
    return "+".join(str(getattr(c, "name", type(c).__name__)) for c in configs) or "baseline"


def method_records(configs: Sequence[Any]) -> list[dict[str, Any]]:
    """Each config as ``{"name", "class", "config"}`` (dataclass fields)."""
    return [
        {"name": getattr(c, "name", None), "class": type(c).__name__,
         "config": dataclasses.asdict(c) if dataclasses.is_dataclass(c) else repr(c)}
        for c in configs
    ]


def guidance_record(configs: Sequence[Any]) -> dict[str, float] | None:
    """The image-free guidance the generations ran, ``{"gamma", "cutoff"}``, or None without guidance.

    Computed by the same function the one generation path (``vlm_attn.steered_generate``) builds its guidance
    processor from, so the record is what ran.
    """
    from ..api import guidance_settings

    settings = guidance_settings(configs)
    return None if settings is None else {"gamma": settings[0], "cutoff": settings[1]}


def model_record(model: Any, model_id: str, revision: str | None = None) -> dict[str, Any]:
    """Model id, the revision asked for, the commit hash transformers resolved (when it knows it), class, dtype."""
    config = getattr(model, "config", None)
    return {
        "id": model_id,
        "name_or_path": getattr(config, "_name_or_path", None),
        "revision": revision,
        "commit_hash": getattr(config, "_commit_hash", None),
        "class": type(model).__name__,
        "dtype": str(getattr(model, "dtype", None)),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class RunOptions:
    """Generation and bookkeeping options shared by the tasks.

    ``max_new_tokens`` None means the task's default; ``command`` (default ``sys.argv``) and ``arguments`` (the
    parsed CLI flags) are recorded as given; ``retry_errors`` (with ``resume``) generates the samples recorded as
    errors again.
    """

    batch_size: int = 8
    max_new_tokens: int | None = None
    seed: int = 0
    limit: int | None = None
    resume: bool = False
    progress: bool = True
    revision: str | None = None
    command: Sequence[str] | None = None
    arguments: Mapping[str, Any] | None = None
    retry_errors: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def decoding(self) -> Decoding:
        """Greedy, or seeded multinomial sampling (``do_sample``) with ``temperature`` and ``top_p``."""
        return Decoding(self.do_sample, float(self.temperature), float(self.top_p), self.seed)


def _finish(
    task: Task, out: Path, model: Any, model_id: str, configs: Sequence[Any], options: RunOptions,
    max_new_tokens: int, metrics: Mapping[str, Any], provenance: Mapping[str, Any], records: Sequence[Mapping],
    dist: DistContext,
) -> dict[str, Any]:
    run_info = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    errors = [{"id": r["id"], "error": r["error"]} for r in records if "error" in r]
    full = {
        "model": model_record(model, model_id, options.revision),
        "methods": method_records(configs),
        "task": dataclasses.asdict(task),
        **provenance,
        "seed": options.seed,
        "generation": {"greedy": not options.do_sample, **options.decoding().record(),
                       "max_new_tokens": max_new_tokens, "batch_size": options.batch_size,
                       "padding_side": "left", "guidance": guidance_record(configs)},
        "n_samples": len(records),
        "errors": errors,
        "world_size": dist.world,
        "versions": package_versions(),
        "started": run_info.get("started"),
        "finished": _now(),
        "command": list(options.command) if options.command is not None else list(sys.argv),
        "arguments": dict(options.arguments or {}),
    }
    record = metrics_record(task.name, method_name(configs), model_id, _json_ready(metrics), _json_ready(full))
    record["intervals"] = recorded_intervals(out, record, options.progress)  # from the files just written
    write_metrics(out, record)
    logger.info("wrote %s", out / "metrics.json")
    return record


def check_options(options: RunOptions) -> None:
    """Raise UserError for a generation setting that cannot work; called before any file is read or model loaded."""
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {options.max_new_tokens} (omit it for the task's default)")
    if options.limit is not None and options.limit < 1:
        raise UserError(f"--limit must be >= 1, got {options.limit} (omit it to run every sample)")
    if options.retry_errors and not options.resume:
        raise UserError("--retry-errors re-runs the failed samples of an existing run: pass --resume too")
    if not math.isfinite(options.temperature) or options.temperature <= 0:
        raise UserError(f"--temperature must be a number > 0, got {options.temperature} (1 samples from the model's "
                        "distribution)")
    if not math.isfinite(options.top_p) or not 0 < options.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {options.top_p} (1 keeps every token)")
    if not options.do_sample and (options.temperature != 1.0 or options.top_p != 1.0):
        raise UserError("--temperature and --top-p apply to sampling: add --do-sample (decoding is greedy without it)")


def _decoding_settings(options: RunOptions) -> dict[str, Any]:
    """What run.json records of the decoding: nothing for greedy (older greedy runs resume as they were)."""
    return {"decoding": options.decoding().record()} if options.do_sample else {}


def _warn_missing_images(samples: Sequence[Sample], where: Path) -> None:
    """Missing image files become error records during the run; say so up front (``--resume --retry-errors``
    generates them once the files are in place)."""
    paths = sorted({Path(s.image) for s in samples if isinstance(s.image, (str, Path))})
    missing = [p for p in paths if not p.is_file()]
    if missing:
        logger.warning("%d of %d images are missing under %s (e.g. %s); their samples will be recorded as errors",
                       len(missing), len(paths), where, missing[0].name)


@dataclass(frozen=True)
class ChairPlan:
    """A CHAIR run without the model: its samples, the scorer and what run.json records, all checked up front."""

    coco: CocoVal2014 | None
    image_ids: tuple[int, ...]
    image_info: Mapping[str, Any]
    prompt: str
    max_new_tokens: int
    samples: tuple[Sample, ...]
    evaluator: CHAIR
    settings: Mapping[str, Any]
    dataset: Mapping[str, Any]
    task: Task = CHAIR_TASK


@dataclass(frozen=True)
class PopePlan:
    """A POPE run without the model: its samples, the questions that score them and what run.json records."""

    splits: Mapping[str, pope_lib.PopeSplit]
    coco: CocoVal2014 | None
    prompt: str
    parse_mode: str
    max_new_tokens: int
    samples: tuple[Sample, ...]
    settings: Mapping[str, Any]
    task: Task = POPE_TASK


def resume_settings(plan: ChairPlan | PopePlan, model_id: str, revision: str | None = None) -> dict[str, Any]:
    """The run.json settings known before the model is loaded (the CLI checks a resume with them first; the
    methods and the model's dtype are added once the model is there)."""
    return _json_ready({
        "task": plan.task.name, "model": model_id, "revision": revision, **plan.settings,
        "max_new_tokens": plan.max_new_tokens, "samples_sha256": samples_sha256(plan.samples),
    })


def _run_settings(plan: ChairPlan | PopePlan, model: Any, model_id: str, configs: Sequence[Any],
                  options: RunOptions) -> dict[str, Any]:
    return {**resume_settings(plan, model_id, options.revision), "methods": method_records(configs),
            "dtype": str(getattr(model, "dtype", None)), "started": _now()}


# ----------------------------------------------------------------------------------------------- CHAIR

def chair_image_list(
    coco: CocoVal2014 | None, image_list: str | Path | None = None, num_images: int = DEFAULT_CHAIR_IMAGES,
    seed: int = 0, instances: Mapping[str, Any] | None = None, pool: Sequence[int] | None = None,
    pool_source: str | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """The CHAIR images and how they were chosen: a user's list, or ``sample_image_ids`` over the pool (val2014's
    images, or ``pool``: the images of the HF copy) with ``seed`` (all of them when there are fewer than
    ``num_images``).

    A listed image that the pool does not hold raises UserError naming the list's file and line.
    """
    if pool is None:
        if coco is None:
            raise ValueError("chair_image_list needs a COCO root or a pool of image ids")
        instances = coco.load_instances() if instances is None else instances
        pool = coco_image_ids(instances)
        pool_source = str(coco.instances_path)
    pool = sorted(pool)
    if image_list is not None:
        located = read_image_list(image_list)
        known = set(pool)
        for where, image_id in located:
            if image_id not in known:
                raise UserError(f"{image_list} {where}: image {image_id} is not in {pool_source}; list images of "
                                "the CHAIR ground truth only (COCO val2014)")
        return [i for _, i in located], {"source": str(image_list), "sha256": file_sha256(image_list)}
    n = min(num_images, len(pool))
    if n < num_images:
        logger.warning("CHAIR: %s holds only %d images; using all of them, not %d", pool_source, n, num_images)
    return sample_image_ids(pool, n, seed), {"source": "sample_image_ids", "seed": seed, "n": n,
                                             "pool": len(pool)}


def coco_dataset_record(coco: CocoVal2014) -> dict[str, Any]:
    """What a CHAIR result records about a COCO root: its path and both annotation files' sha256."""
    return {"name": "COCO val2014", "root": str(coco.root), "instances_sha256": file_sha256(coco.instances_path),
            "captions_sha256": file_sha256(coco.captions_path)}


def check_chair_source(coco_root: str | Path | None, hf_dataset: str | None) -> None:
    """Exactly one CHAIR ground truth: a COCO root or the HF copy."""
    if (coco_root is None) == (hf_dataset is None):
        raise UserError("CHAIR needs one ground truth: --coco-root (val2014/ and its annotations) or --hf-dataset "
                        "(the mscoco_chair copy, a hub name or a save_to_disk folder), not "
                        + ("both" if coco_root is not None else "neither"))


def plan_chair(
    coco_root: str | Path | None,
    options: RunOptions = RunOptions(),
    image_list: str | Path | None = None,
    num_images: int = DEFAULT_CHAIR_IMAGES,
    lemmatizer: str = "auto",
    prompt: str | None = None,
    hf_dataset: str | None = None,
    hf_split: str = "test",
    ground_truth: ChairGroundTruth | None = None,
) -> ChairPlan:
    """Check every CHAIR input and build the run (no model needed): the settings, the ground truth (a COCO root:
    its layout and both annotation files; or the HF ``mscoco_chair`` copy, ``hf_dataset``, whose rows carry
    image and ground truth; ``ground_truth`` is that copy already read), the image list and the prompt."""
    check_options(options)
    if ground_truth is None:
        check_chair_source(coco_root, hf_dataset)
    if image_list is None and num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {num_images}")
    prompt = CHAIR_TASK.prompt if prompt is None else prompt
    if not prompt.strip():
        raise UserError("--prompt is empty; give the captioning instruction (default: "
                        f"{CHAIR_TASK.prompt!r})")
    coco = None
    if ground_truth is None and hf_dataset is not None:
        ground_truth = load_chair_hf(hf_dataset, hf_split)
    if ground_truth is not None:
        ids, list_info = chair_image_list(None, image_list, num_images, options.seed, pool=list(ground_truth.objects),
                                          pool_source=f"the CHAIR dataset {ground_truth.provenance['dataset']}")
        if options.limit is not None:
            ids = ids[: options.limit]
        if ground_truth.image_loader is None:
            raise UserError(f"the CHAIR dataset {ground_truth.provenance['dataset']} has no image column; generate "
                            "from a COCO root (--coco-root), or score captions made elsewhere with vlm-attn score "
                            "chair")
        samples = chair_samples(None, ids, prompt, image_loader=ground_truth.image_loader)
        evaluator = CHAIR(ground_truth={i: ground_truth.objects[i] for i in ids}, lemmatizer=lemmatizer)
        dataset = dict(ground_truth.provenance)
        source = {"hf_dataset": dataset["dataset"], "hf_split": dataset["split"]}
    else:
        coco = coco_val2014(coco_root)  # type: ignore[arg-type]
        coco.check()
        instances = coco.load_instances()
        captions = coco.load_captions()
        ids, list_info = chair_image_list(coco, image_list, num_images, options.seed, instances)
        if options.limit is not None:
            ids = ids[: options.limit]
        samples = chair_samples(coco, ids, prompt)
        _warn_missing_images(samples, coco.image_dir)
        evaluator = CHAIR.from_coco(instances, captions, image_ids=ids, lemmatizer=lemmatizer)
        dataset = coco_dataset_record(coco)
        source = {"coco_root": str(coco.root)}
    check_unique_ids(samples, str(image_list or "the image list"))
    settings = {
        "prompt": prompt, "limit": options.limit, "seed": options.seed, **_decoding_settings(options),
        "num_images": None if image_list is not None else num_images,
        "image_list": None if image_list is None else {"path": str(image_list), "sha256": list_info["sha256"]},
        **source,
    }
    return ChairPlan(
        coco=coco, image_ids=tuple(ids), image_info={**list_info, "limit": options.limit, "image_ids": ids},
        prompt=prompt, max_new_tokens=options.max_new_tokens or CHAIR_TASK.max_new_tokens, samples=tuple(samples),
        evaluator=evaluator, settings=settings, dataset=dataset,
    )


def execute_chair(
    model: Any, processor: Any, model_id: str, plan: ChairPlan, out: str | Path, configs: Sequence[Any] = (),
    options: RunOptions = RunOptions(), dist: DistContext | None = None,
) -> dict[str, Any] | None:
    """Generate, score and record a planned CHAIR run (see ``run_chair``)."""
    dist = dist or DistContext()
    out = Path(out)
    records = run_samples(
        model, processor, list(plan.samples), out, _run_settings(plan, model, model_id, configs, options),
        configs=configs, batch_size=options.batch_size, max_new_tokens=plan.max_new_tokens, seed=options.seed,
        resume=options.resume, progress=options.progress, dist=dist, decoding=options.decoding(),
        extra_files={IMAGE_LIST_FILE: plan.image_info},
        retry_errors=options.retry_errors,
    )
    if records is None:
        return None
    metrics, details = score_chair(records, plan.evaluator, progress=options.progress)
    (out / CHAIR_DETAILS_FILE).write_text(json.dumps(details, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    provenance = {
        "dataset": dict(plan.dataset),
        "image_list": plan.image_info,
        "image_list_file": IMAGE_LIST_FILE,
        "prompt": plan.prompt,
        "lemmatizer": plan.evaluator.lemmatizer_name,
    }
    return _finish(CHAIR_TASK, out, model, model_id, configs, options, plan.max_new_tokens, metrics, provenance,
                   records, dist)


def run_chair(
    model: Any,
    processor: Any,
    model_id: str,
    coco_root: str | Path | None,
    out: str | Path,
    configs: Sequence[Any] = (),
    options: RunOptions = RunOptions(),
    image_list: str | Path | None = None,
    num_images: int = DEFAULT_CHAIR_IMAGES,
    lemmatizer: str = "auto",
    prompt: str | None = None,
    dist: DistContext | None = None,
    hf_dataset: str | None = None,
    hf_split: str = "test",
) -> dict[str, Any] | None:
    """Caption the CHAIR images, score them, write ``metrics.json``; returns its record (None off the main process).

    Writes ``image_list.json`` (the images run, after ``options.limit``) and ``chair_details.json`` (per caption).
    Every input is checked (``plan_chair``) before the first sample is generated.
    """
    plan = plan_chair(coco_root, options, image_list, num_images, lemmatizer, prompt, hf_dataset, hf_split)
    return execute_chair(model, processor, model_id, plan, out, configs, options, dist)


# ----------------------------------------------------------------------------------------------- POPE

def _check_split_names(splits: Sequence[str]) -> None:
    if not splits:
        raise UserError(f"--splits is empty; choose from {', '.join(pope_lib.SPLITS)}")
    for index, name in enumerate(splits):
        if name not in pope_lib.SPLITS:
            raise UserError(f"--splits: unknown split {name!r}; choose from {', '.join(pope_lib.SPLITS)}")
        if name in splits[:index]:
            raise UserError(f"--splits names {name!r} twice; list each split once")


def load_pope_splits(
    pope_dir: str | Path | None = None,
    pope_files: Sequence[str | Path] = (),
    hf_dataset: str | None = None,
    splits: Sequence[str] = pope_lib.SPLITS,
) -> dict[str, pope_lib.PopeSplit]:
    """POPE questions from a folder of the standard files, from explicit files, or from the HF hub (in that order
    of preference; the hub only when neither is given). Every question is checked as it is read (see
    ``pope.load_pope_jsonl``); two files of one split are refused."""
    if pope_files:
        loaded: dict[str, pope_lib.PopeSplit] = {}
        for path in pope_files:
            split = pope_lib.load_pope_jsonl(_existing(path, "--pope-file"))
            if split.name in loaded:
                raise UserError(f"--pope-file {path} and {loaded[split.name].provenance['path']} are both split "
                                f"{split.name!r} (read from the file names); pass one file per split")
            loaded[split.name] = split
        return loaded
    _check_split_names(list(splits))
    if pope_dir is not None:
        if not Path(pope_dir).is_dir():
            raise FileNotFoundError(
                f"--pope-dir {pope_dir} is not a directory (it should hold coco_pope_<split>.jsonl)"
            )
        return pope_lib.load_pope_dir(pope_dir, splits)
    dataset = hf_dataset or pope_lib.HF_DATASET
    try:
        return {s: pope_lib.load_pope_hf(s, dataset=dataset) for s in splits}
    except (ImportError, UserError):
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, OSError, ...)
        raise RuntimeError(
            f"could not load POPE from the HF hub ({dataset}): {exc}\nOffline? Pass --pope-dir DIR holding "
            "coco_pope_{random,popular,adversarial}.jsonl (or --pope-file) and --coco-root with val2014."
        ) from exc


def _existing(path: str | Path, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    return path


def check_pope_template(template: str) -> None:
    """A POPE prompt must place the question (``{question}``) and may hold no other ``{field}``."""
    if "{question}" not in template:
        raise UserError(f"--prompt {template!r} has no {{question}}: the POPE prompt is a template, e.g. "
                        f"{POPE_TASK.prompt!r}")
    try:
        template.format(question="q")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--prompt {template!r}: only {{question}} may stand in braces ({type(exc).__name__}: "
                        f"{exc}); write {{{{ and }}}} for literal braces") from None


def plan_pope(
    splits: Mapping[str, pope_lib.PopeSplit],
    options: RunOptions = RunOptions(),
    coco_root: str | Path | None = None,
    parse_mode: str = "official",
    prompt: str | None = None,
    image_root: str | Path | None = None,
) -> PopePlan:
    """Check every POPE input and build the run (no model needed): settings, parse mode, prompt template, the
    image folder (``image_root``, else COCO's val2014) and the samples (labels were checked when the questions
    were read)."""
    check_options(options)
    if parse_mode not in pope_lib.PARSE_MODES:
        raise UserError(f"POPE parse mode must be one of {pope_lib.PARSE_MODES}, not {parse_mode!r}")
    if not splits:
        raise UserError("no POPE splits to run; pass --pope-dir, --pope-file or --pope-hf")
    coco = None
    if coco_root is not None:
        coco = coco_val2014(coco_root)
        if not coco.image_dir.is_dir():
            raise FileNotFoundError(f"COCO images not found: {coco.image_dir}; download val2014.zip from "
                                    f"cocodataset.org and unzip it into {coco.root}")
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"--image-root {image_root} is not a directory; pass the folder that the question "
                                "files' image names are relative to (e.g. GQA's images/)")
    template = POPE_TASK.prompt if prompt is None else prompt
    check_pope_template(template)
    samples = pope_samples(splits, coco, template, options.limit, image_root)
    check_unique_ids(samples, "the POPE questions")
    if image_root is not None:
        _warn_missing_images(samples, Path(image_root))
    elif coco is not None:
        _warn_missing_images(samples, coco.image_dir)
    settings = {"prompt": template, "limit": options.limit, "seed": options.seed, **_decoding_settings(options),
                "splits": list(splits),
                "coco_root": str(coco.root) if coco is not None else None}
    if image_root is not None:
        settings["image_root"] = str(image_root)
    return PopePlan(
        splits=dict(splits), coco=coco, prompt=template, parse_mode=parse_mode,
        max_new_tokens=options.max_new_tokens or POPE_TASK.max_new_tokens, samples=tuple(samples), settings=settings,
    )


def execute_pope(
    model: Any, processor: Any, model_id: str, plan: PopePlan, out: str | Path, configs: Sequence[Any] = (),
    options: RunOptions = RunOptions(), dist: DistContext | None = None,
) -> dict[str, Any] | None:
    """Generate, score and record a planned POPE run (see ``run_pope``). Metrics use the labels of the question
    files as they are now, and so does ``samples.jsonl`` (a label fixed before ``--resume`` is used in both)."""
    dist = dist or DistContext()
    out = Path(out)
    records = run_samples(
        model, processor, list(plan.samples), out, _run_settings(plan, model, model_id, configs, options),
        configs=configs, batch_size=options.batch_size, max_new_tokens=plan.max_new_tokens, seed=options.seed,
        resume=options.resume, progress=options.progress, dist=dist, decoding=options.decoding(),
        retry_errors=options.retry_errors,
    )
    if records is None:
        return None
    metrics = score_pope(records, plan.splits, plan.parse_mode)
    provenance = {
        "dataset": {name: split.provenance for name, split in plan.splits.items()},
        "coco_root": str(plan.coco.root) if plan.coco is not None else None,
        "image_root": plan.settings.get("image_root"),
        "limit_per_split": options.limit,
        "image_list": sorted({str(r["image"]) for r in records}),
        "prompt": plan.prompt,
        "parse_mode": plan.parse_mode,
    }
    return _finish(POPE_TASK, out, model, model_id, configs, options, plan.max_new_tokens, metrics, provenance,
                   records, dist)


def run_pope(
    model: Any,
    processor: Any,
    model_id: str,
    splits: Mapping[str, pope_lib.PopeSplit],
    out: str | Path,
    configs: Sequence[Any] = (),
    options: RunOptions = RunOptions(),
    coco_root: str | Path | None = None,
    parse_mode: str = "official",
    prompt: str | None = None,
    dist: DistContext | None = None,
    image_root: str | Path | None = None,
) -> dict[str, Any] | None:
    """Answer the POPE questions (first ``options.limit`` per split), score, write ``metrics.json``; returns its
    record (None off the main process). Every input is checked (``plan_pope``) before the first sample."""
    plan = plan_pope(splits, options, coco_root, parse_mode, prompt, image_root)
    return execute_pope(model, processor, model_id, plan, out, configs, options, dist)
