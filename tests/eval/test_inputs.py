"""Bad input to `vlm-attn eval` / `vlm-attn report` is refused in one line naming the file and line (or the flag),
before the model is loaded or anything is written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pytest

from vlm_attn.cli import main
from vlm_attn.errors import UserError


def refusal(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one-line message `main` refuses ``argv`` with, however the CLI reports it (an exception it lets through,
    SystemExit with the message, or an exit code with the message on stderr)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        message = exc.code if isinstance(exc.code, str) else capsys.readouterr().err
    except (UserError, FileNotFoundError) as exc:
        message = str(exc)
    else:
        assert rc != 0, f"accepted: {argv}"
        message = capsys.readouterr().err
    # transformers' own progress bars (loading weights) go to stderr too; they are not ours
    message = "\n".join(line for line in message.replace("\r", "\n").splitlines()
                        if line.strip() and "it/s]" not in line).strip()
    if message.startswith("error: "):  # the CLI's one-line form on stderr
        message = message[len("error: "):]
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


@pytest.fixture
def no_model(monkeypatch):
    """Make loading a model fail the test: every refusal here must come before it."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("vlm_attn.loading.load_model", forbidden)


def _pope(toy_coco: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "pope", "--model", "tiny-llava", "--coco-root", str(toy_coco), "--out", str(out), *extra]


def _chair(toy_coco: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "chair", "--model", "tiny-llava", "--coco-root", str(toy_coco), "--out", str(out), *extra]


def _edit_line(path: Path, number: int, edit: Callable[[dict], object]) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = json.dumps(edit(json.loads(lines[number - 1])))
    path.write_text("\n".join(lines) + "\n")


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


# (name, how to break the toy POPE folder -> extra flags, expected message as regex)
POPE_CASES = [
    ("label", lambda d: (_edit_line(d / "coco_pope_random.jsonl", 3, lambda r: {**r, "label": "maybe"}),
                         ["--pope-dir", str(d)]),
     r"coco_pope_random\.jsonl line 3: label 'maybe' is not one of yes/no"),
    ("missing key", lambda d: (_edit_line(d / "coco_pope_popular.jsonl", 2, lambda r: _without(r, "image")),
                               ["--pope-dir", str(d)]),
     r"coco_pope_popular\.jsonl line 2: missing key 'image'; each line needs question_id, image, text, label"),
    ("not json", lambda d: ((d / "coco_pope_random.jsonl").write_text(
        (d / "coco_pope_random.jsonl").read_text() + '{"question_id": 9, "image"\n'), ["--pope-dir", str(d)]),
     r"coco_pope_random\.jsonl line 5: not valid JSON"),
    ("not an object", lambda d: (_edit_line(d / "coco_pope_adversarial.jsonl", 4, lambda r: [r]),
                                 ["--pope-dir", str(d)]),
     r"coco_pope_adversarial\.jsonl line 4: expected a JSON object, got list"),
    ("duplicate id", lambda d: (_edit_line(d / "coco_pope_random.jsonl", 3, lambda r: {**r, "question_id": 1}),
                                ["--pope-dir", str(d)]),
     r"coco_pope_random\.jsonl line 3: question_id 1 repeats line 1; question ids must be unique"),
    ("empty file", lambda d: ((d / "coco_pope_popular.jsonl").write_text("\n"), ["--pope-dir", str(d)]),
     r"coco_pope_popular\.jsonl: no questions"),
    ("same split twice", lambda d: (None, ["--pope-file", str(d / "coco_pope_random.jsonl"),
                                           "--pope-file", str(d / "coco_pope_random.jsonl")]),
     r"--pope-file .*coco_pope_random\.jsonl and .*coco_pope_random\.jsonl are both split 'random'"),
    ("unknown split", lambda d: (None, ["--pope-dir", str(d), "--splits", "random,rnadom"]),
     r"--splits: unknown split 'rnadom'; choose from random, popular, adversarial"),
    ("prompt without question", lambda d: (None, ["--pope-dir", str(d), "--prompt", "Is it there?"]),
     r"--prompt 'Is it there\?' has no \{question\}"),
    ("prompt with another field", lambda d: (None, ["--pope-dir", str(d), "--prompt", "{question} {answer}"]),
     r"only \{question\} may stand in braces"),
    ("max new tokens", lambda d: (None, ["--pope-dir", str(d), "--max-new-tokens", "0"]),
     r"--max-new-tokens must be >= 1, got 0"),
    ("batch size", lambda d: (None, ["--pope-dir", str(d), "--batch-size", "0"]), r"--batch-size must be >= 1"),
    ("limit", lambda d: (None, ["--pope-dir", str(d), "--limit", "-2"]), r"--limit must be >= 1, got -2"),
    ("retry without resume", lambda d: (None, ["--pope-dir", str(d), "--retry-errors"]),
     r"--retry-errors .*pass --resume too"),
]


@pytest.mark.parametrize("case", POPE_CASES, ids=[c[0] for c in POPE_CASES])
def test_bad_pope_input_is_refused_before_the_model(case, toy_coco, toy_pope, tmp_path, capsys, no_model):
    _, breaker, expected = case
    _, flags = breaker(toy_pope)
    out = tmp_path / "out"
    message = refusal(_pope(toy_coco, out, *flags), capsys)
    assert re.search(expected, message), message
    assert not out.exists()  # nothing written


def _break_instances(coco: Path) -> list[str]:
    (coco / "annotations" / "instances_val2014.json").write_text('{"images": [\n,]}')
    return []


def _image_list(coco: Path, text: str, name: str = "list.txt") -> list[str]:
    path = coco.parent / name
    path.write_text(text)
    return ["--image-list", str(path)]


CHAIR_CASES = [
    ("corrupt annotations", _break_instances,
     r"instances_val2014\.json line 2: not valid JSON \(Expecting value, column 1\); re-download"),
    ("not annotations", lambda c: ((c / "annotations" / "captions_val2014.json").write_text('{"info": {}}'), [])[1],
     r"captions_val2014\.json: no 'images' list"),
    ("listed twice", lambda c: _image_list(c, "1\n# two\nCOCO_val2014_000000000001.jpg\n"),
     r"list\.txt line 3: image 1 repeats line 1; list each image once"),
    ("not in val2014", lambda c: _image_list(c, "1\n99\n"),
     r"list\.txt line 2: image 99 is not in .*instances_val2014\.json"),
    ("not an id", lambda c: _image_list(c, "[1, \"two\"]", "list.json"), r"list\.json item 2: not an image id: 'two'"),
    ("bad json list", lambda c: _image_list(c, "[1,\n2,,]", "list.json"), r"list\.json line 2: not valid JSON"),
    ("empty list", lambda c: _image_list(c, "# nothing\n"), r"list\.txt: the image list is empty"),
    ("num images", lambda c: ["--num-images", "0"], r"--num-images must be >= 1, got 0"),
    ("empty prompt", lambda c: ["--prompt", " "], r"--prompt is empty"),
]


@pytest.mark.parametrize("case", CHAIR_CASES, ids=[c[0] for c in CHAIR_CASES])
def test_bad_chair_input_is_refused_before_the_model(case, toy_coco, tmp_path, capsys, no_model):
    _, breaker, expected = case
    flags = breaker(toy_coco)
    out = tmp_path / "out"
    message = refusal(_chair(toy_coco, out, "--lemmatizer", "offline", *flags), capsys)
    assert re.search(expected, message), message
    assert not out.exists()


def test_report_names_a_corrupt_metrics_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"task": "pope",\n"method": }')
    message = refusal(["report", str(run)], capsys)
    assert message.startswith(f"{run / 'metrics.json'} line 2: not valid JSON"), message
    assert "--digits must be >= 0" in refusal(["report", str(run), "--digits", "-1"], capsys)
