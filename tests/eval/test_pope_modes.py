"""The papers' other POPE answer rules (OPERA/HALC's ``recorder``, VCD's substring test), the other POPE question
sets (A-OKVQA, GQA: file names, folders, their own image roots), all on hand-computed examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_attn.errors import UserError
from vlm_attn.eval import tasks
from vlm_attn.eval.pope import benchmark_name, load_pope_dir, load_pope_jsonl, parse_answer, pope_metrics


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("no.", "no"),
        ("NO", "no"),                                   # NO is a negation word here (not for the official rule)
        ("There isn't a dog.", "no"),                   # any word ending in n't
        ("I don't know", "no"),
        ("Yes. No other animals are visible.", "no"),   # the whole answer is read, not only its first sentence
        ("I do not know", "no"),
        ("yes\nno", "yes"),                             # split on single spaces: "yes\nno" is one word
        ("No,there", "yes"),                            # commas are deleted, so the word is "Nothere"
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_recorder_parsing(answer, parsed):
    assert parse_answer(answer, "recorder") == parsed


@pytest.mark.parametrize(
    ("answer", "label", "parsed"),
    [
        ("Yes", "yes", "yes"),
        (" YES! ", "yes", "yes"),
        ("No", "yes", "no"),
        ("eyes", "yes", "yes"),                         # a substring, not a word
        ("I do not know", "yes", "no"),
        ("I do not know", "no", "no"),                  # "no" occurs in "not" (and "know"): right on a no-question
        ("There is nothing", "no", "no"),
        ("Yes, nothing else", "no", "no"),              # "no" in "nothing": counted as a correct no
        ("Yes", "no", "yes"),
        ("There isn't one", "no", "yes"),               # no "no" anywhere: a false positive
    ],
)
def test_vcd_parsing_depends_on_the_label(answer, label, parsed):
    assert parse_answer(answer, "vcd", label) == parsed


def test_vcd_needs_the_label():
    with pytest.raises(ValueError, match="label"):
        parse_answer("yes", "vcd")


LABELS = ["yes", "yes", "no", "no", "yes", "no"]
ANSWERS = ["Yes. No doubt.", "NO", "There isn't one", "no", "Yes", "I do not know"]


def test_metrics_of_each_mode_by_hand():
    # recorder: no no no no yes no -> TP 1 (4), FN 2 (0, 1), TN 3 (2, 3, 5), FP 0
    m = pope_metrics(LABELS, ANSWERS, "recorder")
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 2, 3, 0)
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]) == (4 / 6, 1.0, 1 / 3, 1 / 6)
    assert m["f1"] == pytest.approx(0.5, abs=1e-15)
    # official (first sentence; No/not/no): yes yes yes no yes no -> TP 3, FP 1 (2), TN 2, FN 0
    m = pope_metrics(LABELS, ANSWERS, "official")
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 0, 2, 1)
    # vcd: 0 "yes" in it (TP), 1 no "yes" (FN), 2 no "no" (FP), 3 TN, 4 TP, 5 "no" in "not" (TN)
    m = pope_metrics(LABELS, ANSWERS, "vcd")
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 1, 2, 1)
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]) == (4 / 6, 2 / 3, 2 / 3, 3 / 6)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-15)


def test_plan_refuses_an_unknown_mode(tmp_path):
    split = _write(tmp_path / "coco_pope_random.jsonl", [("COCO_val2014_000000000001.jpg", "yes")])
    with pytest.raises(UserError, match="parse mode must be one of"):
        tasks.plan_pope({"random": load_pope_jsonl(split)}, parse_mode="strict", image_root=tmp_path)


def _write(path: Path, rows: list[tuple[str, str]], as_array: bool = False) -> Path:
    items = [{"question_id": i, "image": image, "text": "Is there a dog in the image?", "label": label}
             for i, (image, label) in enumerate(rows, 1)]
    path.write_text(json.dumps(items, indent=4) if as_array else "".join(json.dumps(r) + "\n" for r in items))
    return path


@pytest.mark.parametrize(
    ("name", "question_set", "split"),
    [
        ("coco_pope_random.jsonl", "coco", "random"),
        ("aokvqa_pope_seem_popular.json", "aokvqa", "popular"),
        ("gqa_pope_seem_adversarial.json", "gqa", "adversarial"),
        ("gqa_pope_adversarial.json", "gqa", "adversarial"),
        ("questions.jsonl", "unknown", "questions"),
    ],
)
def test_question_sets_and_splits_from_file_names(tmp_path, name, question_set, split):
    path = _write(tmp_path / name, [("2405722.jpg", "yes"), ("2405722.jpg", "no")], as_array=name.endswith(".json"))
    loaded = load_pope_jsonl(path)
    assert benchmark_name(path) == question_set
    assert loaded.name == split and loaded.provenance["benchmark"] == question_set
    assert [q.image for q in loaded.questions] == ["2405722.jpg", "2405722.jpg"]


def test_pope_dir_finds_other_question_sets(tmp_path):
    for split in ("random", "popular"):
        _write(tmp_path / f"gqa_pope_seem_{split}.json", [("1339.jpg", "yes")], as_array=True)
    splits = load_pope_dir(tmp_path, ("random", "popular"))
    assert {s.provenance["benchmark"] for s in splits.values()} == {"gqa"}
    _write(tmp_path / "aokvqa_pope_seem_random.json", [("COCO_val2014_000000000001.jpg", "yes")])
    with pytest.raises(UserError, match="several question files of split 'random'.*--pope-file"):
        load_pope_dir(tmp_path, ("random",))
    _write(tmp_path / "coco_pope_random.jsonl", [("COCO_val2014_000000000001.jpg", "no")])
    assert load_pope_dir(tmp_path, ("random",))["random"].provenance["benchmark"] == "coco"  # COCO's file first


def test_gqa_questions_take_images_from_their_own_root(tmp_path):
    root = tmp_path / "gqa_images"
    root.mkdir()
    path = _write(tmp_path / "gqa_pope_seem_random.json", [("2405722.jpg", "yes"), ("1339.jpg", "no")])
    plan = tasks.plan_pope({"random": load_pope_jsonl(path)}, parse_mode="vcd", image_root=root)
    assert [s.image for s in plan.samples] == [root / "2405722.jpg", root / "1339.jpg"]
    assert plan.settings["image_root"] == str(root) and plan.parse_mode == "vcd"
    with pytest.raises(FileNotFoundError, match="--image-root .* is not a directory"):
        tasks.plan_pope({"random": load_pope_jsonl(path)}, image_root=tmp_path / "nope")
    with pytest.raises(UserError, match="--coco-root .*or --image-root"):
        tasks.plan_pope({"random": load_pope_jsonl(path)})
