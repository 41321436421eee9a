"""The CHAIR and POPE ``evaluate`` modules load from their local folders and give the library's numbers."""

from __future__ import annotations

import pytest

from vlm_attn.eval.evaluate_modules import evaluate_module_path

evaluate = pytest.importorskip("evaluate", reason="the `evaluate` package is not installed")


def test_pope_module(tmp_path):
    module = evaluate.load(evaluate_module_path("pope"), cache_dir=str(tmp_path))
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    answers = ["Yes", "No", "yes, there is", "No", "Yes", "There is no cat.", "Yes.", "yes"]
    official = module.compute(predictions=answers, references=labels)
    assert (official["accuracy"], official["precision"], official["recall"]) == (5 / 8, 3 / 5, 3 / 4)
    strict = module.compute(predictions=answers, references=labels, mode="lmms-eval")
    assert (strict["accuracy"], strict["unparsed"]) == (2 / 8, 3)


def test_chair_module(tmp_path):
    module = evaluate.load(evaluate_module_path("chair"), cache_dir=str(tmp_path))
    result = module.compute(
        predictions=["A man and a dog sit on a couch.", "Two cats on a bench."],
        references=[["person", "dog"], ["cat", "bench"]],
        lemmatizer="offline",
    )
    assert result["lemmatizer"] == "offline"
    assert (result["CHAIR_S"], result["CHAIR_I"], result["Recall"], result["Precision"]) == (0.5, 0.2, 1.0, 0.8)
    assert result["Len"] == 8.0


def test_unknown_module_name():
    with pytest.raises(ValueError, match="must be one of"):
        evaluate_module_path("mme")
