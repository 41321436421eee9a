"""metrics.json records, the markdown comparison table and the CSV, on fake runs."""

from __future__ import annotations

import json

import pytest

from vlm_attn.eval.report import (
    compare_runs,
    default_columns,
    flatten_metrics,
    load_run,
    load_runs,
    markdown_table,
    metrics_record,
    write_csv,
    write_metrics,
)

CHAIR_A = {"CHAIR_S": 0.5, "CHAIR_I": 0.125, "Recall": 0.75, "Precision": 0.8, "F1": 0.774, "Len": 98.25}
CHAIR_B = {"CHAIR_S": 0.25, "CHAIR_I": 0.0625, "Recall": 0.7, "Precision": 0.9, "F1": 0.7875, "Len": 90.0}


@pytest.fixture
def chair_runs(tmp_path):
    a = tmp_path / "baseline-llava"
    b = tmp_path / "pai-llava"
    write_metrics(a, metrics_record("chair", "baseline", "llava-1.5-7b", CHAIR_A, {"lemmatizer": "offline"}))
    write_metrics(b, metrics_record("chair", "pai", "llava-1.5-7b", CHAIR_B))
    return [a, b]


def test_record_round_trip(chair_runs):
    run = load_run(chair_runs[0])
    assert (run.run, run.task, run.method, run.model) == ("baseline-llava", "chair", "baseline", "llava-1.5-7b")
    assert run.metrics == CHAIR_A and run.provenance == {"lemmatizer": "offline"}
    assert json.loads((chair_runs[1] / "metrics.json").read_text())["provenance"] == {}


def test_markdown_table_two_runs(chair_runs):
    assert markdown_table(load_runs(chair_runs)) == (
        "| run | method | model | CHAIR_S | CHAIR_I | Recall | Precision | F1 | Len |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| baseline-llava | baseline | llava-1.5-7b | 50.0 | 12.5 | 75.0 | 80.0 | 77.4 | 98.2 |\n"
        "| pai-llava | pai | llava-1.5-7b | 25.0 | 6.2 | 70.0 | 90.0 | 78.8 | 90.0 |\n"
    )
    raw = markdown_table(load_runs(chair_runs), columns=["CHAIR_S", "missing"], percent=False, digits=3)
    assert raw.splitlines()[2] == "| baseline-llava | baseline | llava-1.5-7b | 0.500 | - |"


def test_csv_two_runs(chair_runs, tmp_path):
    path = write_csv(load_runs(chair_runs), tmp_path / "out" / "chair.csv")
    assert path.read_text() == (
        "run,method,model,CHAIR_S,CHAIR_I,Recall,Precision,F1,Len\n"
        "baseline-llava,baseline,llava-1.5-7b,0.5,0.125,0.75,0.8,0.774,98.25\n"
        "pai-llava,pai,llava-1.5-7b,0.25,0.0625,0.7,0.9,0.7875,90.0\n"
    )
    table = compare_runs(chair_runs, tmp_path / "again.csv")
    assert table.startswith("| run | method | model | CHAIR_S |")
    assert (tmp_path / "again.csv").read_text() == path.read_text()


def test_pope_columns_and_nesting(tmp_path):
    split = {"accuracy": 0.875, "precision": 0.9, "recall": 0.85, "f1": 0.874, "yes_ratio": 0.47, "n": 3000}
    metrics = {"random": split, "adversarial": split, "average": split}
    write_metrics(tmp_path / "r", metrics_record("pope", "var", "qwen2-vl", metrics))
    runs = load_runs([tmp_path / "r"])
    assert default_columns("pope", runs) == [
        "random.accuracy", "random.f1", "adversarial.accuracy", "adversarial.f1",
        "average.accuracy", "average.precision", "average.recall", "average.f1", "average.yes_ratio",
    ]
    assert flatten_metrics({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}
    assert markdown_table(runs).splitlines()[2] == (
        "| r | var | qwen2-vl | 87.5 | 87.4 | 87.5 | 87.4 | 87.5 | 90.0 | 85.0 | 87.4 | 47.0 |"
    )
    assert markdown_table(runs, columns=["average.n"]).splitlines()[2] == "| r | var | qwen2-vl | 3000 |"


def test_errors(tmp_path, chair_runs):
    with pytest.raises(ValueError, match="task must be one of"):
        metrics_record("mme", "x", "y", {})
    write_metrics(tmp_path / "p", metrics_record("pope", "x", "y", {"average": {"f1": 0.5}}))
    with pytest.raises(ValueError, match="mix tasks"):
        markdown_table(load_runs([*chair_runs, tmp_path / "p"]))
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_run(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text(json.dumps({"task": "chair"}))
    with pytest.raises(ValueError, match=r"missing keys \['method', 'model', 'metrics'\]"):
        load_run(tmp_path / "bad")
    with pytest.raises(ValueError, match="no runs"):
        markdown_table([])
