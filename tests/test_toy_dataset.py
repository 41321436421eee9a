"""The toy COCO generator (issue 7): deterministic, COCO-format, biased co-occurrence, POPE files by the recipe."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_toy_coco.py"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("make_toy_coco", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(toy, tmp_path):
    a = toy.make_toy_coco(tmp_path / "a", n_train=40, n_val=20, seed=3)
    b = toy.make_toy_coco(tmp_path / "b", n_train=40, n_val=20, seed=3)
    c = toy.make_toy_coco(tmp_path / "c", n_train=40, n_val=20, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_coco_format_and_captions_name_every_object(toy, tmp_path):
    root = toy.make_toy_coco(tmp_path, n_train=30, n_val=30, seed=0)
    inst = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    caps = json.loads((root / "annotations" / "captions_val2014.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    assert len(names) == 16
    per_image = {}
    for a in inst["annotations"]:
        per_image.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    for im in inst["images"]:
        assert (root / "val2014" / im["file_name"]).is_file()
        assert 1 <= len(per_image[im["id"]]) <= 4
    for c in caps["annotations"]:
        for obj in per_image[c["image_id"]]:
            assert obj in c["caption"]


def test_cooccurrence_bias_in_train_not_in_val(toy, tmp_path):
    import random

    rate = {}
    for split, prob in (("train", 0.9), ("val", 0.5)):
        rng = random.Random(0)
        together = alone = 0
        for _ in range(3000):
            objs = toy.sample_objects(rng, prob)
            if "fork" in objs:
                together += "knife" in objs
                alone += "knife" not in objs
        rate[split] = together / (together + alone)
    assert rate["train"] > 0.85 and rate["val"] < 0.65


def test_pope_recipe(toy, tmp_path):
    root = toy.make_toy_coco(tmp_path, n_train=60, n_val=40, seed=1)
    inst = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    present = {}
    for a in inst["annotations"]:
        present.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    for split in ("random", "popular", "adversarial"):
        rows = [json.loads(line) for line in (root / "pope" / f"coco_pope_{split}.jsonl").read_text().splitlines()]
        by_image = {}
        for r in rows:
            by_image.setdefault(r["image"], []).append(r)
            obj = r["text"].removeprefix("Is there a ").removesuffix(" in the image?")
            image_id = int(r["image"].split("_")[-1].split(".")[0])
            assert (obj in present[image_id]) == (r["label"] == "yes")
        assert all(sorted(q["label"] for q in qs) == ["no"] * 3 + ["yes"] * 3 for qs in by_image.values())
