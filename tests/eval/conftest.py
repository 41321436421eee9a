"""Fixtures for the evaluation tests: the reference data folder and a toy COCO val2014 on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from vlm_attn.testing.tiny import tiny_path

# shared/ sits beside the checkout (<parent>/main and <parent>/shared); VLM_ATTN_SHARED points elsewhere.
SHARED = Path(os.environ.get("VLM_ATTN_SHARED") or Path(__file__).resolve().parents[2].parent / "shared")

TOY_CATEGORIES = [
    {"id": 1, "name": "person"}, {"id": 15, "name": "bench"}, {"id": 17, "name": "cat"},
    {"id": 18, "name": "dog"}, {"id": 70, "name": "toilet"},
]
# image id -> (instance category ids, human captions)
TOY_IMAGES = {
    1: ([18, 1, 18], ["A man walking his dog.", "A person with a puppy on a leash."]),
    2: ([70], ["A small bathroom with a sink."]),
    3: ([], ["A cat sleeping on a bench.", "A kitten on a wooden bench."]),
}


def shared_file(*parts: str) -> Path:
    """A file under shared/data, or skip the test when the folder is not beside the checkout."""
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        pytest.skip(f"reference file {path} not present (shared/ is not beside the checkout)")
    return path


@pytest.fixture
def toy_coco(tmp_path: Path) -> Path:
    """A COCO-layout root with three tiny JPEGs and COCO-format instances/captions for val2014."""
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, instances, captions = [], [], []
    for image_id, (cats, caps) in TOY_IMAGES.items():
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.new("RGB", (16, 12), (40 * image_id, 80, 120)).save(root / "val2014" / name)
        images.append({"id": image_id, "file_name": name, "width": 16, "height": 12})
        for cat in cats:
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": cat,
                              "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0})
        for cap in caps:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": cap})
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": TOY_CATEGORIES})
    )
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    return root


@pytest.fixture
def toy_pope(tmp_path: Path) -> Path:
    """coco_pope_{random,popular,adversarial}.jsonl over the toy COCO images: 4 questions per split."""
    folder = tmp_path / "pope"
    folder.mkdir()
    objects = {1: ("dog", "cat"), 2: ("toilet", "dog"), 3: ("cat", "toilet")}
    for split in ("random", "popular", "adversarial"):
        rows = []
        for image_id, (present, absent) in objects.items():
            for obj, label in ((present, "yes"), (absent, "no")):
                if len(rows) < 4:
                    rows.append({"question_id": len(rows) + 1, "image": f"COCO_val2014_{image_id:012d}.jpg",
                                 "text": f"Is there a {obj} in the image?", "label": label})
        (folder / f"coco_pope_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def cache_env(tiny_cache, monkeypatch) -> dict[str, str]:
    """VLM_ATTN_CACHE shared with the other CLI tests (tiny-llava is built once); the env for subprocesses."""
    cache = tiny_cache.parent / "cli_cache"
    monkeypatch.setenv("VLM_ATTN_CACHE", str(cache))
    tiny_path("llava", cache / "tiny")
    return {**os.environ, "VLM_ATTN_CACHE": str(cache)}
