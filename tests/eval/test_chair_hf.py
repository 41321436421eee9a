"""CHAIR from an ``mscoco_chair``-style Hugging Face copy (images and ground truth inside), as lmms-eval reads it:
a tiny local dataset written with ``save_to_disk`` gives the same ground truth, the same captions and the same
metrics as the COCO root it was built from, in ``eval`` and in ``score``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vlm_attn.cli import main
from vlm_attn.errors import UserError
from vlm_attn.eval.chair import CHAIR
from vlm_attn.eval.chair_hf import chair_ground_truth_from_dataset, load_chair_hf

datasets = pytest.importorskip("datasets", reason="the HF copy of CHAIR is read with the datasets package")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_toy_coco.py"
FAST = ["--no-progress"]


def _hf_copy(coco_root: Path, out: Path, with_images: bool = True) -> Path:
    """An mscoco_chair-style dataset of a COCO root: question_id (image id), gt_object (CHAIR ground truth), image."""
    instances = json.loads((coco_root / "annotations" / "instances_val2014.json").read_text())
    captions = json.loads((coco_root / "annotations" / "captions_val2014.json").read_text())
    truth = CHAIR.from_coco(instances, captions, lemmatizer="offline").ground_truth
    images = sorted(instances["images"], key=lambda im: im["id"])
    columns = {"question_id": [str(im["id"]) for im in images],
               "gt_object": [sorted(truth[im["id"]]) for im in images]}
    features = {"question_id": datasets.Value("string"), "gt_object": datasets.Sequence(datasets.Value("string"))}
    if with_images:
        columns["image"] = [str(coco_root / "val2014" / im["file_name"]) for im in images]
        features["image"] = datasets.Image()
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_toy_coco", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_toy_coco(tmp_path_factory.mktemp("toy"), n_train=20, n_val=6, seed=9)


def test_ground_truth_of_a_local_copy(toy_coco, tmp_path):
    truth = load_chair_hf(str(_hf_copy(toy_coco, tmp_path / "hf")))
    assert dict(truth.objects) == {1: {"dog", "person"}, 2: {"toilet", "sink"}, 3: {"cat", "bench"}}
    assert truth.provenance["n_images"] == 3 and len(truth.provenance["content_sha256"]) == 64
    assert truth.provenance["fingerprint"] and truth.image_loader(2).size == (16, 12)


def test_bad_copies_are_refused():
    rows = {"question_id": [1, 2], "gt_object": [["dog"], ["cat"]]}
    assert chair_ground_truth_from_dataset(datasets.Dataset.from_dict(rows), "mine").image_loader is None
    with pytest.raises(UserError, match=r"missing columns \['gt_object'\].*an mscoco_chair-style dataset has"):
        chair_ground_truth_from_dataset(datasets.Dataset.from_dict({"question_id": [1]}), "mine")
    with pytest.raises(UserError, match="row 1: image 1 repeats row 0"):
        chair_ground_truth_from_dataset(datasets.Dataset.from_dict({"question_id": [1, 1], "gt_object": [[], []]}),
                                        "mine")
    with pytest.raises(UserError, match=r"row 0: gt_object holds \['puppy'\], not COCO category names"):
        chair_ground_truth_from_dataset(datasets.Dataset.from_dict({"question_id": [1], "gt_object": [["puppy"]]}),
                                        "mine")
    with pytest.raises(UserError, match="row 0: question_id 'COCO' is not a COCO image id"):
        chair_ground_truth_from_dataset(datasets.Dataset.from_dict({"question_id": ["COCO"], "gt_object": [[]]}),
                                        "mine")


def test_score_against_the_copy_by_hand(toy_coco, tmp_path):
    hf = _hf_copy(toy_coco, tmp_path / "hf", with_images=False)
    captions = tmp_path / "caps.jsonl"
    captions.write_text(json.dumps({"image_id": 3, "caption": "A cat and a dog on a bench."}) + "\n")
    out = tmp_path / "scored"
    assert main(["score", "chair", "--captions", str(captions), "--hf-dataset", str(hf), "--lemmatizer", "offline",
                 "--out", str(out), *FAST]) == 0
    record = json.loads((out / "metrics.json").read_text())
    m = record["metrics"]  # GT {cat, bench}; mentions cat, dog (hallucinated), bench; 9 tokens
    assert (m["CHAIR_S"], m["CHAIR_I"], m["Recall"], m["Precision"], m["Len"]) == (1.0, 1 / 3, 1.0, 2 / 3, 9.0)
    assert record["provenance"]["dataset"]["dataset"] == str(hf)
    captions.write_text(json.dumps({"image_id": 4, "caption": "A cat."}) + "\n")
    with pytest.raises(SystemExit, match=r"1 of 1 image ids are not in the CHAIR dataset .*\(e\.g\. 4\)"):
        main(["score", "chair", "--captions", str(captions), "--hf-dataset", str(hf), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="has no image column; generate from a COCO root"):
        main(["eval", "chair", "--model", "toy-vlm", "--hf-dataset", str(hf), "--out", str(tmp_path / "o2")])
    with pytest.raises(SystemExit, match="CHAIR needs one ground truth.*not both"):
        main(["eval", "chair", "--model", "toy-vlm", "--hf-dataset", str(hf), "--coco-root", str(toy_coco),
              "--out", str(tmp_path / "o3")])


def test_eval_from_the_copy_equals_eval_from_the_coco_root(toy_data, tmp_path):
    hf = _hf_copy(toy_data, tmp_path / "hf")
    common = ["--model", "toy-vlm", "--num-images", "4", "--seed", "2", "--max-new-tokens", "24", "--lemmatizer",
              "offline", *FAST]
    assert main(["eval", "chair", "--coco-root", str(toy_data), "--out", str(tmp_path / "coco"), *common]) == 0
    assert main(["eval", "chair", "--hf-dataset", str(hf), "--out", str(tmp_path / "hf-run"), *common]) == 0
    from_coco, from_hf = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("coco", "hf-run"))
    assert from_hf["metrics"] == from_coco["metrics"] and from_coco["metrics"]["Recall"] > 0
    assert from_hf["provenance"]["image_list"]["image_ids"] == from_coco["provenance"]["image_list"]["image_ids"]
    assert from_hf["provenance"]["dataset"]["name"] == "mscoco_chair (HF)"
    outputs = [(r["id"], r["output"]) for r in map(json.loads, (tmp_path / "hf-run" / "samples.jsonl").open())]
    assert outputs == [(r["id"], r["output"]) for r in map(json.loads, (tmp_path / "coco" / "samples.jsonl").open())]


def test_hub_copy_unreachable_says_what_to_do(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"could not load the CHAIR dataset tsunghanwu/mscoco_chair \(hub "
                                           r"unreachable\); offline\? pass a folder written by Dataset.save_to_disk"):
        load_chair_hf()
    with pytest.raises(UserError, match=r"no split 'val' \(found \['test'\]\); pass --hf-split"):
        datasets.DatasetDict({"test": datasets.Dataset.from_dict({"question_id": [1], "gt_object": [[]]})}
                             ).save_to_disk(str(tmp_path / "dd"))
        load_chair_hf(str(tmp_path / "dd"), split="val")
