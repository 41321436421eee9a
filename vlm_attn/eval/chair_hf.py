"""CHAIR ground truth from the Hugging Face copy of the benchmark (``tsunghanwu/mscoco_chair``, the dataset that
lmms-eval's ``coco_cap_chair`` task reads), as an alternative to a local COCO root.

Each row of that dataset is one COCO val2014 image with its ground truth inside: ``question_id`` (the COCO image
id), ``gt_object`` (the list of COCO category names present: the CHAIR ground truth, instances and human captions
already merged) and ``image`` (the picture). A local copy written by ``Dataset.save_to_disk`` (a folder) is read
with ``datasets.load_from_disk``; anything else is a hub name for ``datasets.load_dataset``. ``datasets`` is
imported only here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import UserError
from .synonyms import load_synonyms

HF_CHAIR_DATASET = "tsunghanwu/mscoco_chair"
ID_COLUMN = "question_id"
GT_COLUMN = "gt_object"
IMAGE_COLUMN = "image"


@dataclass(frozen=True)
class ChairGroundTruth:
    """Image id -> CHAIR categories, where they came from, and (for the HF copy) a loader of each image."""

    objects: Mapping[int, frozenset[str]]
    provenance: dict[str, Any]
    image_loader: Callable[[int], Any] | None = field(default=None, repr=False, compare=False)


def _open(name: str, split: str, revision: str | None) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("the HF copy of CHAIR needs the `datasets` package: pip install datasets (or pip "
                          "install 'vlm-attn[eval]'); --coco-root works without it") from exc
    if Path(name).expanduser().is_dir():
        loaded = datasets.load_from_disk(str(Path(name).expanduser()))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"--hf-dataset {name}: no split {split!r} (found {sorted(loaded)}); pass --hf-split")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, OSError, ...)
        raise RuntimeError(f"could not load the CHAIR dataset {name} ({exc}); offline? pass a folder written by "
                           "Dataset.save_to_disk, or --coco-root with the COCO val2014 annotations") from exc


def chair_ground_truth_from_dataset(dataset: Any, source: str, split: str = "test",
                                    revision: str | None = None) -> ChairGroundTruth:
    """Read the ground truth of an ``mscoco_chair``-style ``datasets.Dataset`` (columns checked, every category
    checked against the CHAIR synonym table, image ids unique); images are decoded only on demand."""
    columns = list(getattr(dataset, "column_names", []))
    missing = [c for c in (ID_COLUMN, GT_COLUMN) if c not in columns]
    if missing:
        raise UserError(f"CHAIR dataset {source}: missing columns {missing} (found {columns}); an mscoco_chair-style "
                        f"dataset has {ID_COLUMN} (the COCO image id), {GT_COLUMN} (category names) and {IMAGE_COLUMN}")
    categories = set(load_synonyms().categories)
    ids, gts = dataset[ID_COLUMN], dataset[GT_COLUMN]
    objects: dict[int, frozenset[str]] = {}
    row_of: dict[int, int] = {}
    digest = hashlib.sha256()
    for row, (raw_id, gt) in enumerate(zip(ids, gts)):
        try:
            image_id = int(raw_id)
        except (TypeError, ValueError):
            raise UserError(f"CHAIR dataset {source} row {row}: {ID_COLUMN} {raw_id!r} is not a COCO image "
                            "id") from None
        if image_id in objects:
            raise UserError(f"CHAIR dataset {source} row {row}: image {image_id} repeats row {row_of[image_id]}; "
                            "each image must appear once")
        unknown = sorted(set(gt) - categories)
        if unknown:
            raise UserError(f"CHAIR dataset {source} row {row}: {GT_COLUMN} holds {unknown}, not COCO category names "
                            "of the CHAIR synonym table")
        objects[image_id] = frozenset(gt)
        row_of[image_id] = row
        digest.update(json.dumps([image_id, sorted(gt)]).encode() + b"\n")
    if not objects:
        raise UserError(f"CHAIR dataset {source}: no rows")
    provenance = {
        "name": "mscoco_chair (HF)", "dataset": source, "split": split, "revision": revision,
        "fingerprint": getattr(dataset, "_fingerprint", None), "n_images": len(objects),
        "content_sha256": digest.hexdigest(),
    }
    loader = None
    if IMAGE_COLUMN in columns:
        def loader(image_id: int) -> Any:
            return dataset[row_of[int(image_id)]][IMAGE_COLUMN]
    return ChairGroundTruth(objects=objects, provenance=provenance, image_loader=loader)


def load_chair_hf(name: str = HF_CHAIR_DATASET, split: str = "test", revision: str | None = None) -> ChairGroundTruth:
    """The CHAIR ground truth of an HF dataset (hub name or ``save_to_disk`` folder); see the module docstring."""
    return chair_ground_truth_from_dataset(_open(name, split, revision), name, split, revision)
