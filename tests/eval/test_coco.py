"""Local COCO val2014 layout, clear errors for missing files, and the portable CHAIR image list."""

from __future__ import annotations

import json
import random

import pytest

from vlm_attn.eval.coco import (
    CocoFileMissingError,
    coco_val2014,
    image_ids,
    load_image_list,
    sample_image_ids,
    save_image_list,
)


def test_paths_and_images(toy_coco):
    coco = coco_val2014(toy_coco)
    coco.check()
    assert coco.image_path(3).name == "COCO_val2014_000000000003.jpg"
    image = coco.load_image(2)
    assert (image.mode, image.size) == ("RGB", (16, 12))
    assert image_ids(coco.load_instances()) == [1, 2, 3]


def test_missing_annotation_file_names_the_file_and_download(toy_coco):
    (toy_coco / "annotations" / "captions_val2014.json").unlink()
    coco = coco_val2014(toy_coco)
    with pytest.raises(CocoFileMissingError, match=r"captions_val2014\.json; download annotations_trainval2014\.zip"):
        coco.load_captions()
    with pytest.raises(FileNotFoundError, match="captions_val2014.json"):
        coco.check()


def test_missing_image_names_the_file(toy_coco):
    coco = coco_val2014(toy_coco)
    with pytest.raises(CocoFileMissingError, match=r"COCO_val2014_000000000042\.jpg; download val2014\.zip"):
        coco.image_path(42)
    assert coco.image_path(42, check=False).name == "COCO_val2014_000000000042.jpg"


def test_missing_root_reports_instances_first(tmp_path):
    with pytest.raises(CocoFileMissingError, match="instances_val2014.json"):
        coco_val2014(tmp_path / "nowhere").check()


def test_sample_is_seeded_sorted_and_portable():
    ids = list(range(100, 0, -1)) + [5, 5]  # order and duplicates do not matter
    assert sample_image_ids(ids, n=5, seed=0) == [6, 34, 50, 54, 98]
    assert sample_image_ids(ids, n=5, seed=1) == [9, 18, 33, 73, 98]
    assert sample_image_ids(ids, n=5, seed=0) == sorted(random.Random(0).sample(list(range(1, 101)), 5))
    with pytest.raises(ValueError, match="cannot sample 101 images from 100"):
        sample_image_ids(ids, n=101)


def test_image_list_round_trip_and_formats(tmp_path):
    path = save_image_list(tmp_path / "lists" / "chair500.json", [42, 7], seed=0, n=2, source="val2014")
    assert json.loads(path.read_text()) == {"image_ids": [42, 7], "seed": 0, "n": 2, "source": "val2014"}
    assert load_image_list(path) == [42, 7]
    (tmp_path / "plain.json").write_text("[3, 1, 2]")
    assert load_image_list(tmp_path / "plain.json") == [3, 1, 2]
    (tmp_path / "ids.txt").write_text("# my list\n42\n\nCOCO_val2014_000000000007.jpg\n  9  # trailing comment\n")
    assert load_image_list(tmp_path / "ids.txt") == [42, 7, 9]
    (tmp_path / "bad.txt").write_text("42\nnot-an-id\n")
    with pytest.raises(ValueError, match=r"bad\.txt line 2: not an image id"):
        load_image_list(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="image list not found"):
        load_image_list(tmp_path / "missing.txt")
