"""`vlm-attn score chair|pope`: files generated elsewhere score exactly like the same outputs of our own
`vlm-attn eval` run (toy-vlm on a toy COCO it really captions), land in a folder `vlm-attn report` reads, and every
bad file is refused in one line before any scoring."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vlm_attn.cli import main
from vlm_attn.eval import pope as pope_lib
from vlm_attn.eval import tasks

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_toy_coco.py"
FAST = ["--no-progress"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """Eight toy val images (COCO layout) the shipped toy-vlm describes with real COCO words, and their POPE files."""
    spec = importlib.util.spec_from_file_location("make_toy_coco", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_toy_coco(tmp_path_factory.mktemp("toy"), n_train=20, n_val=8, seed=5)


def test_scoring_a_caption_file_equals_our_own_run(toy_data, tmp_path, capsys):
    run = tmp_path / "runs" / "eval-chair"
    assert main(["eval", "chair", "--model", "toy-vlm", "--coco-root", str(toy_data), "--num-images", "6",
                 "--max-new-tokens", "24", "--lemmatizer", "offline", "--out", str(run), *FAST]) == 0
    ours = json.loads((run / "metrics.json").read_text())
    assert ours["metrics"]["CHAIR_S"] > 0 and ours["metrics"]["Recall"] > 0  # the captions do mention objects
    # the same captions as OPERA's chair_eval.py writes them, in another order
    samples = _rows(run / "samples.jsonl")
    opera = _write_jsonl(tmp_path / "greedy.jsonl",
                         [{"image_id": r["image_id"], "caption": r["output"]} for r in reversed(samples)])
    out = tmp_path / "runs" / "scored-chair"
    capsys.readouterr()
    assert main(["score", "chair", "--captions", str(opera), "--coco-root", str(toy_data), "--lemmatizer",
                 "offline", "--image-list", str(run / "image_list.json"), "--out", str(out), *FAST]) == 0
    assert "| scored-chair | external | unknown |" in capsys.readouterr().out
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["task"] == "chair" and scored["metrics"] == ours["metrics"]
    assert json.loads((out / "chair_details.json").read_text()) == json.loads((run / "chair_details.json").read_text())
    assert _rows(out / "samples.jsonl") == [{"id": r["id"], "image_id": r["image_id"], "output": r["output"]}
                                            for r in samples]
    prov = scored["provenance"]
    assert prov["scored_file"]["sha256"] == tasks.file_sha256(opera) and prov["scored_file"]["format"] == "jsonl"
    assert prov["dataset"] == ours["provenance"]["dataset"] and prov["lemmatizer"] == "offline"
    assert prov["image_list"]["image_ids"] == ours["provenance"]["image_list"]["image_ids"]
    assert prov["versions"]["vlm-attn"] is not None and prov["source"] == "score" and prov["finished"]

    # COCO's result format (a JSON list), file names for ids, other key names; no list: the file's order
    coco_results = tmp_path / "results.json"
    coco_results.write_text(json.dumps([{"file": f"COCO_val2014_{r['image_id']:012d}.jpg", "answer": r["output"]}
                                        for r in samples]))
    out2 = tmp_path / "runs" / "scored-list"
    assert main(["score", "chair", "--captions", str(coco_results), "--coco-root", str(toy_data), "--image-key",
                 "file", "--caption-key", "answer", "--lemmatizer", "offline", "--method", "theirs", "--model",
                 "toy-vlm", "--out", str(out2), *FAST]) == 0
    again = json.loads((out2 / "metrics.json").read_text())
    assert again["metrics"] == ours["metrics"] and (again["method"], again["model"]) == ("theirs", "toy-vlm")

    assert main(["report", str(run), str(out), str(out2)]) == 0
    table = capsys.readouterr().out
    assert "| eval-chair |" in table and "| scored-chair |" in table and "| scored-list |" in table


def test_scoring_answer_files_equals_our_own_run(toy_data, tmp_path, capsys):
    run = tmp_path / "eval-pope"
    assert main(["eval", "pope", "--model", "toy-vlm", "--pope-dir", str(toy_data / "pope"), "--coco-root",
                 str(toy_data), "--prompt", "{question}", "--limit", "6", "--max-new-tokens", "4", "--out", str(run),
                 *FAST]) == 0
    ours = json.loads((run / "metrics.json").read_text())
    samples = _rows(run / "samples.jsonl")
    answer_files = []
    for split in pope_lib.SPLITS:  # VCD / LLaVA answer files: {question_id, prompt, text, model_id, image, ...}
        rows = [{"question_id": r["question_id"], "prompt": r["question"], "text": r["output"],
                 "model_id": "toy-vlm", "image": r["image"], "metadata": {}} for r in samples if r["split"] == split]
        answer_files += ["--answers", str(_write_jsonl(tmp_path / f"toy_coco_pope_{split}_answers.jsonl", rows))]
    out = tmp_path / "scored-pope"
    assert main(["score", "pope", *answer_files, "--pope-dir", str(toy_data / "pope"), "--out", str(out),
                 *FAST]) == 0
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["metrics"] == ours["metrics"] and scored["model"] == "toy-vlm"
    prov = scored["provenance"]
    assert prov["parse_mode"] == "official" and prov["dataset"] == ours["provenance"]["dataset"]
    assert prov["dataset"]["random"]["version"] == ours["provenance"]["dataset"]["random"]["version"]
    assert len(prov["scored_file"]["popular"]["sha256"]) == 64
    assert prov["image_list"] == ours["provenance"]["image_list"]

    # every other parse mode gives what scoring our run's records with it gives, and is named in the result
    splits = tasks.load_pope_splits(toy_data / "pope")
    for mode in ("lmms-eval", "recorder", "vcd"):
        moded = tmp_path / f"scored-{mode}"
        assert main(["score", "pope", *answer_files, "--pope-dir", str(toy_data / "pope"), "--parse", mode,
                     "--out", str(moded), *FAST]) == 0
        record = json.loads((moded / "metrics.json").read_text())
        assert record["metrics"] == json.loads(json.dumps(tasks.score_pope(samples, splits, mode)))
        assert record["provenance"]["parse_mode"] == mode

    # one file by position (no question_id), named with --split, against one question file
    by_position = _write_jsonl(tmp_path / "answers.jsonl", [{"text": r["output"]} for r in samples
                                                            if r["split"] == "adversarial"])
    single = tmp_path / "scored-single"
    assert main(["score", "pope", "--answers", str(by_position), "--split", "adversarial", "--pope-file",
                 str(toy_data / "pope" / "coco_pope_adversarial.jsonl"), "--out", str(single), *FAST]) == 0
    assert json.loads((single / "metrics.json").read_text())["metrics"]["adversarial"] == \
        ours["metrics"]["adversarial"]


def _fails(args: list[str], pattern: str, out: Path) -> None:
    with pytest.raises(SystemExit, match=pattern) as info:
        main([*args, "--out", str(out), *FAST])
    assert info.value.code == 2
    assert not out.exists()  # refused before anything was written


def test_caption_file_errors_name_the_line_and_the_fix(toy_coco, tmp_path):
    out = tmp_path / "out"
    base = ["score", "chair", "--coco-root", str(toy_coco), "--lemmatizer", "offline", "--captions"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    _fails([*base, str(empty)], r"empty\.jsonl: the file is empty; pass the caption file", out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": 1, "caption": "A dog."}\n{"image_id": 2, "caption": "A sink."\n')
    _fails([*base, str(bad)], r"bad\.jsonl line 2: not valid JSON .*each line needs one object", out)
    bad.write_text('{"image_id": 1, "caption": "A dog."}\n\n{"image_id": 2, "text": "A sink."}\n')
    _fails([*base, str(bad)], r"bad\.jsonl line 3: missing field 'caption' .*--caption-key", out)
    bad.write_text('{"image_id": 1, "caption": "A dog."}\n{"image_id": 1, "caption": "A dog again."}\n')
    _fails([*base, str(bad)], "line 2: image 1 repeats line 1; keep one caption per image", out)
    bad.write_text('{"image_id": "dog.jpg", "caption": "A dog."}\n')
    _fails([*base, str(bad)], "line 1: image_id 'dog.jpg' is not a COCO image id", out)
    bad.write_text('[1, 2]')
    _fails([*base, str(bad)], r"item 1: expected a JSON object", out)
    unknown = _write_jsonl(tmp_path / "unknown.jsonl", [{"image_id": i, "caption": "A dog."} for i in (1, 7, 8)])
    _fails([*base, str(unknown)], r"2 of 3 image ids are not in .*instances_val2014\.json \(e\.g\. 7, 8\); score "
                                  r"against the images the captions were made for", out)
    good = _write_jsonl(tmp_path / "good.jsonl", [{"image_id": 1, "caption": "A dog."}])
    listed = tmp_path / "list.txt"
    listed.write_text("1\n3\n")
    _fails([*base, str(good), "--image-list", str(listed)], r"1 of 2 listed images are not in the caption file", out)
    _fails(["score", "chair", "--captions", str(good), "--lemmatizer", "offline"],
           "CHAIR needs one ground truth: --coco-root .* or --hf-dataset", out)
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match="is not empty .*choose a new --out"):
        main([*base, str(good), "--out", str(out)])


def test_caption_file_scored_by_hand(toy_coco, tmp_path):
    # toy COCO ground truth (instances + human captions): 1 = {dog, person}, 2 = {toilet, sink}
    captions = _write_jsonl(tmp_path / "caps.jsonl", [
        {"image_id": 1, "caption": "A man and his dog near a cat."},   # cat hallucinated
        {"image_id": 2, "caption": "A toilet."},
    ])
    out = tmp_path / "hand"
    assert main(["score", "chair", "--captions", str(captions), "--coco-root", str(toy_coco), "--lemmatizer",
                 "offline", "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    # mentions: man->person, dog, cat | toilet: 4, 1 hallucinated; covered 2 + 1 of GT 2 + 2; distinct 3 + 1
    assert (m["CHAIR_S"], m["CHAIR_I"], m["Recall"], m["Precision"]) == (1 / 2, 1 / 4, 3 / 4, 3 / 4)
    assert m["F1"] == pytest.approx(3 / 4, abs=1e-15)
    assert m["Len"] == (9 + 3) / 2 and (m["n_scored"], m["n_errors"]) == (2, 0)
    # the CHAIR script's own result file re-scores to the same numbers
    results = tmp_path / "chair_results.json"
    results.write_text(json.dumps({"overall_metrics": {}, "sentences": [
        {"image_id": 1, "caption": "A man and his dog near a cat.", "mscoco_hallucinated_words": [["cat", "cat"]]},
        {"image_id": 2, "caption": "A toilet.", "mscoco_hallucinated_words": []}]}))
    again = tmp_path / "again"
    assert main(["score", "chair", "--captions", str(results), "--coco-root", str(toy_coco), "--lemmatizer",
                 "offline", "--out", str(again), *FAST]) == 0
    record = json.loads((again / "metrics.json").read_text())
    assert record["metrics"] == m and record["provenance"]["scored_file"]["format"] == "chair-results"


def test_answer_file_errors_name_the_line_and_the_fix(toy_pope, tmp_path):
    out = tmp_path / "out"
    base = ["score", "pope", "--pope-dir", str(toy_pope), "--answers"]
    empty = tmp_path / "coco_pope_random_answers.jsonl"
    empty.write_text("")
    _fails([*base, str(empty)], "the file is empty; pass the answer file", out)
    bad = tmp_path / "x_random.jsonl"
    bad.write_text('{"question_id": 1, "text": "Yes"}\nnot json\n')
    _fails([*base, str(bad)], r"x_random\.jsonl line 2: not valid JSON", out)
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 9, "text": "No"}\n')
    _fails([*base, str(bad)], r"1 of 2 question ids are not in .*coco_pope_random\.jsonl \(split random\)", out)
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "output": "No"}\n')
    _fails([*base, str(bad)], r"line 2: no answer field 'text' or 'answer' .*--answer-key", out)
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"text": "No"}\n')
    _fails([*base, str(bad)], "line 2: no question_id while other rows have one", out)
    bad.write_text('{"question_id": 1, "text": "Yes", "label": "no"}\n')
    _fails([*base, str(bad)], "line 1: label 'no' but .* labels question 1 'yes'", out)
    bad.write_text('{"question": "Is there a cat in the image?", "answer": "Yes"}\n')
    _fails([*base, str(bad)], r"line 1: question 'Is there a cat in the image\?' is not 'Is there a dog in the "
                              r"image\?'", out)
    nameless = _write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}])
    _fails([*base, str(nameless)], "no split .* in the file name; pass --split NAME", out)
    _fails([*base, str(nameless), "--split", "sometimes"], "--split: unknown split 'sometimes'", out)
    _fails(["score", "pope", "--answers", str(nameless), "--split", "random"],
           "without a question file every row needs 'question' and 'label'", out)
    pope_file = ["--pope-file", str(toy_pope / "coco_pope_random.jsonl")]
    popular = _write_jsonl(tmp_path / "y_popular.jsonl", [{"question_id": 1, "text": "Yes"}])
    _fails(["score", "pope", "--answers", str(popular), *pope_file], "split 'popular' has no question file", out)


def test_answers_carrying_their_questions_need_no_question_file(tmp_path):
    rows = [{"question_id": 1, "question": "Is there a dog in the image?", "label": "yes", "answer": "Yes"},
            {"question_id": 2, "question": "Is there a cat in the image?", "label": "no", "answer": "Yes, a cat."},
            {"question_id": 3, "question": "Is there a bus in the image?", "label": "no", "answer": "No"}]
    answers = _write_jsonl(tmp_path / "pope_adversarial.jsonl", rows)
    out = tmp_path / "own"
    assert main(["score", "pope", "--answers", str(answers), "--out", str(out), *FAST]) == 0
    record = json.loads((out / "metrics.json").read_text())
    m = record["metrics"]["adversarial"]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 0) and m["accuracy"] == 2 / 3
    assert record["provenance"]["dataset"]["adversarial"]["source"] == "answers"
