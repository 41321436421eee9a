"""POPE loading, both answer-parsing modes, and metrics on scripted answers computed by hand."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from vlm_attn.eval.pope import (
    PopeQuestion,
    average_splits,
    content_sha256,
    evaluate_pope,
    load_pope_dir,
    load_pope_hf,
    load_pope_jsonl,
    parse_answer,
    pope_from_hf,
    pope_metrics,
    score_split,
)

from .conftest import shared_file


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),
        ("No", "no"),
        ("no.", "no"),
        ("Yes. No other animals are visible.", "yes"),  # only the first sentence counts
        ("NO", "yes"),                                  # case-sensitive word match: NO is not No/no
        ("I don't think so", "yes"),                    # "don't" is not "not"
        ("yes\nno", "yes"),                             # words are split on single spaces only
        ("No,there", "yes"),                            # commas are deleted, not replaced by spaces
        ("", "yes"),
    ],
)
def test_official_parsing(answer, parsed):
    assert parse_answer(answer, "official") == parsed


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [(" Yes ", "yes"), ("NO", "no"), ("Yes.", "yes."), ("No, there is not.", "no, there is not.")],
)
def test_lmms_eval_parsing(answer, parsed):
    assert parse_answer(answer, "lmms-eval") == parsed


def test_unknown_mode():
    with pytest.raises(ValueError, match="parse mode"):
        parse_answer("yes", "strict")


LABELS = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
ANSWERS = ["Yes", "No", "yes, there is", "No", "Yes", "There is no cat.", "Yes.", "yes"]


def test_metrics_official_by_hand():
    # parsed: yes no yes no yes no yes yes -> TP 3 (0,2,6), FN 1 (1), FP 2 (4,7), TN 2 (3,5)
    m = pope_metrics(LABELS, ANSWERS, "official")
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["unparsed"], m["n"]) == (3, 1, 2, 2, 0, 8)
    assert m["accuracy"] == 5 / 8
    assert m["precision"] == 3 / 5
    assert m["recall"] == 3 / 4
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-15)
    assert m["yes_ratio"] == 5 / 8


def test_metrics_lmms_eval_by_hand():
    # exact matches only: 0 (yes) and 3 (no); "yes, there is", "there is no cat." and "yes." match nothing
    m = pope_metrics(LABELS, ANSWERS, "lmms-eval")
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["unparsed"]) == (1, 1, 2, 1, 3)
    assert m["accuracy"] == 2 / 8
    assert m["precision"] == 1 / 3
    assert m["recall"] == 1 / 2
    assert m["f1"] == pytest.approx(0.4, abs=1e-15)
    assert m["yes_ratio"] == 3 / 8


def test_metric_errors():
    with pytest.raises(ValueError, match="2 labels but 1 answers"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="yes/no"):
        pope_metrics(["maybe"], ["yes"])


def _write_jsonl(path, n, n_yes, typo=False):
    with open(path, "w") as f:
        for i in range(n):
            noun = "imange" if typo else "image"
            row = {"question_id": i + 1, "image": f"COCO_val2014_{i // 6:012d}.jpg",
                   "text": f"Is there a dog in the {noun}?", "label": "yes" if i < n_yes else "no"}
            f.write(json.dumps(row) + "\n")
    return path


def test_splits_scoring_and_average(tmp_path):
    for split in ("random", "popular"):
        _write_jsonl(tmp_path / f"coco_pope_{split}.jsonl", 4, 2)
    splits = load_pope_dir(tmp_path, ("random", "popular"))
    assert splits["random"].labels == ["yes", "yes", "no", "no"]
    answers = {
        "random": ["yes", "yes", "no", "no"],                 # all correct
        "popular": {1: "yes", 2: "no", 3: "yes", 4: "yes"},  # by question id: TP 1, FN 1, FP 2
    }
    result = evaluate_pope(splits, answers)
    assert result["random"]["accuracy"] == 1.0
    assert (result["popular"]["accuracy"], result["popular"]["precision"]) == (0.25, 1 / 3)
    assert result["popular"]["yes_ratio"] == 0.75
    assert result["average"]["accuracy"] == 0.625
    assert result["average"]["recall"] == 0.75
    assert result["average"]["yes_ratio"] == 0.625
    assert (result["average"]["n"], result["average"]["fp"]) == (8, 2)
    with pytest.raises(KeyError, match="no answer for 1 questions"):
        score_split(splits["popular"], {1: "yes", 2: "no", 3: "no"})
    with pytest.raises(ValueError, match="no POPE splits"):
        average_splits({})
    with pytest.raises(FileNotFoundError, match="coco_pope_adversarial"):
        load_pope_dir(tmp_path)


def test_version_notes_and_hash(tmp_path):
    path = _write_jsonl(tmp_path / "coco_pope_random.json", 2910, 1455, typo=True)
    legacy = load_pope_jsonl(path)
    assert legacy.name == "random"
    assert legacy.provenance["version"] == "legacy-2910"
    assert legacy.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert legacy.provenance["n_yes"] == 1455
    custom = _write_jsonl(tmp_path / "mine.jsonl", 10, 5)
    assert load_pope_jsonl(custom, split="custom").provenance["version"] == "nonstandard-10"
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "No"}]))
    split = load_pope_jsonl(array)
    assert split.questions == (PopeQuestion(1, "a.jpg", "Is there a cat?", "no"),)


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_shared_pope_files(split):
    path = shared_file("pope", f"coco_pope_{split}.jsonl")
    loaded = load_pope_jsonl(path)
    assert loaded.name == split
    assert len(loaded) == 3000
    assert loaded.labels.count("yes") == 1500 and loaded.labels.count("no") == 1500
    assert len({q.image for q in loaded.questions}) == 500
    assert loaded.provenance["version"] == "standard-3000"
    assert loaded.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # a model that always says yes: accuracy 0.5, recall 1, precision 0.5, yes-ratio 1
    m = score_split(loaded, ["Yes."] * 3000)
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)


def test_hf_conversion_with_local_dataset():
    datasets = pytest.importorskip("datasets", reason="`datasets` not installed")
    from PIL import Image

    rows = {
        "id": ["0", "1", "2"], "question_id": ["1", "2", "1"],
        "question": ["Is there a dog in the image?", "Is there a car in the image?", "Is there a cat in the image?"],
        "answer": ["yes", "no", "Yes"], "image_source": ["COCO_val2014_000000000001"] * 3,
        "category": ["random", "random", "popular"],
        "image": [Image.new("RGB", (4, 4), (i * 60, 0, 0)) for i in range(3)],
    }
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({
        **{k: datasets.Value("string") for k in rows if k != "image"}, "image": datasets.Image(),
    }))
    split = pope_from_hf(ds, "random")
    assert [q.question_id for q in split.questions] == ["1", "2"]
    assert split.labels == ["yes", "no"]
    assert split.provenance["source"] == "hf" and split.provenance["n_questions"] == 2
    assert split.image_loader(1).getpixel((0, 0)) == (60, 0, 0)
    assert pope_from_hf(ds, "popular").labels == ["yes"]
    # same questions from a JSONL file hash the same
    same = [PopeQuestion("1", "x.jpg", rows["question"][0], "yes"), PopeQuestion(2, "y.jpg", rows["question"][1], "no")]
    assert split.provenance["content_sha256"] == content_sha256(same)
    with pytest.raises(ValueError, match="no POPE rows with category 'adversarial'"):
        pope_from_hf(ds, "adversarial")


def test_hf_loader_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_pope_hf("random")
