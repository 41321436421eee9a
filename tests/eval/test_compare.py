"""`vlm-attn report` intervals, `vlm-attn compare`, `report --baseline` (Holm) and `report --plot` on run folders
built from hand-written outputs with the package's own scorers (no model needed)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from vlm_attn.cli import main
from vlm_attn.eval import stats
from vlm_attn.eval.chair import CHAIR
from vlm_attn.eval.compare import compare_baseline, compare_pair
from vlm_attn.eval.pope import PopeQuestion, PopeSplit
from vlm_attn.eval.report import load_run, metrics_record, write_metrics
from vlm_attn.eval.tables import chair_table, load_table
from vlm_attn.eval.tasks import score_chair, score_pope

GT = {1: {"dog", "person"}, 2: {"toilet"}, 3: {"cat", "bench"}, 4: {"car"}}
BASE = {1: "A man with a dog and a cat.", 2: "A toilet and a sink next to a dog.", 3: "A cat on a bench.",
        4: "A car near a person and a dog."}
FEWER = {1: "A man with a dog.", 2: "A toilet and a sink.", 3: "A cat on a bench.", 4: "A car near a dog."}


def chair_run(folder: Path, captions: dict[int, str], method: str) -> Path:
    """A CHAIR run folder as `vlm-attn eval chair` leaves it, minus the intervals (a run from before them)."""
    folder.mkdir(parents=True)
    records = [{"id": str(i), "image_id": i, "output": text} for i, text in captions.items()]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics, details = score_chair(records, CHAIR(ground_truth=GT, lemmatizer="offline"))
    (folder / "chair_details.json").write_text(json.dumps(details))
    write_metrics(folder, metrics_record("chair", method, "toy", metrics, {"seed": 0}))
    return folder


QUESTIONS = [("dog", "yes"), ("cat", "no"), ("car", "yes"), ("bus", "no"), ("cup", "yes"), ("sink", "no")]


def pope_run(folder: Path, answers: dict[str, list[str]], method: str) -> Path:
    """A POPE run folder (samples.jsonl + metrics.json, official parsing)."""
    folder.mkdir(parents=True)
    splits, records = {}, []
    for split, outs in answers.items():
        qs = tuple(PopeQuestion(i + 1, "x.jpg", f"Is there a {o}?", lab) for i, (o, lab) in enumerate(QUESTIONS))
        splits[split] = PopeSplit(split, qs, {})
        records += [{"id": f"{split}/{q.question_id}", "split": split, "question_id": q.question_id,
                     "label": q.label, "output": out} for q, out in zip(qs, outs)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = score_pope(records, splits, "official")
    write_metrics(folder, metrics_record("pope", method, "toy", metrics, {"parse_mode": "official"}))
    return folder


def test_report_shows_intervals_of_an_old_run(tmp_path, capsys):
    run = chair_run(tmp_path / "chair-base", BASE, "baseline")
    assert "intervals" not in json.loads((run / "metrics.json").read_text())
    assert main(["report", str(run), "--bootstrap", "300", "--bootstrap-seed", "4"]) == 0
    out = capsys.readouterr().out
    table = chair_table(json.loads((run / "chair_details.json").read_text()))
    iv = stats.bootstrap(table.counts, stats.chair_statistic, 300, 4)["all"]["CHAIR_I"]
    # CHAIR_I = 5 hallucinated of 11 mentions (cat; sink, dog; -; person, dog), a percentage with its interval
    assert iv.estimate == pytest.approx(5 / 11)
    assert f"45.5 [{100 * iv.low:.1f}, {100 * iv.high:.1f}]" in out
    assert "95% percentile bootstrap intervals over images, 300 resamples, seed 4" in out
    assert main(["report", str(run), "--bootstrap", "300", "--bootstrap-seed", "4", "--csv",
                 str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert list(rows[0])[3:6] == ["CHAIR_S", "CHAIR_S.low", "CHAIR_S.high"]
    assert (float(rows[0]["CHAIR_I.low"]), float(rows[0]["CHAIR_I.high"])) == (iv.low, iv.high)


def test_eval_records_intervals_equal_to_a_recomputation(cache_env, toy_coco, tmp_path, capsys):
    out = tmp_path / "chair-run"
    assert main(["eval", "chair", "--model", "tiny-llava", "--coco-root", str(toy_coco), "--out", str(out),
                 "--num-images", "3", "--lemmatizer", "offline", "--max-new-tokens", "6", "--no-progress"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    iv = record["intervals"]
    assert (iv["method"], iv["n_resamples"], iv["seed"], iv["level"], iv["n"]) == (
        "percentile bootstrap", 1000, 0, 0.95, {"all": 3})
    assert set(iv["metrics"]) == {"CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len"}
    table = load_table(out, record)
    again = stats.bootstrap(table.counts, stats.chair_statistic, 1000, 0)["all"]
    assert iv["metrics"] == {m: [v.low, v.high] for m, v in again.items()}
    for m, (low, high) in iv["metrics"].items():
        assert low <= record["metrics"][m] + 1e-12 and record["metrics"][m] <= high + 1e-12


def test_compare_chair_pair(tmp_path, capsys):
    a = chair_run(tmp_path / "base", BASE, "baseline")
    b = chair_run(tmp_path / "fewer", FEWER, "var")
    result = compare_pair(a, b, n_resamples=400, seed=1)
    rows = {r.metric: r for r in result.rows}
    # A: 5 of 11 mentions hallucinated; B: 2 of 8 (sink in image 2, dog in image 4)
    assert rows["CHAIR_I"].a == pytest.approx(5 / 11) and rows["CHAIR_I"].b == pytest.approx(2 / 8)
    assert rows["CHAIR_I"].difference == pytest.approx(2 / 8 - 5 / 11)
    want = stats.paired_bootstrap(load_table(a, _record(a)).counts, load_table(b, _record(b)).counts,
                                  stats.chair_statistic, 400, 1)["all"]["CHAIR_I"]
    assert (rows["CHAIR_I"].low, rows["CHAIR_I"].high, rows["CHAIR_I"].p_value) == (want.low, want.high, want.p_value)
    assert rows["CHAIR_I"].test == "paired bootstrap" and result.n_samples == 4
    assert main(["compare", str(a), str(b), "--bootstrap", "400", "--bootstrap-seed", "1",
                 "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "CHAIR: fewer against base on the same 4 images" in out
    assert f"| fewer | CHAIR_I | 45.5 | 25.0 | -20.5 [{100 * want.low:.1f}, {100 * want.high:.1f}] |" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["settings"]["n_resamples"] == 400 and saved["rows"][1]["metric"] == "CHAIR_I"


def _record(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_compare_refuses_other_samples_and_other_tasks(tmp_path, capsys):
    a = chair_run(tmp_path / "base", BASE, "baseline")
    b = chair_run(tmp_path / "three", {i: FEWER[i] for i in (1, 2, 3)}, "var")
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(a), str(b)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "base and three were not scored on the same samples (1 only in base (e.g. 4); 0 only in three)" in err
    assert "--resume --retry-errors" in err
    p = pope_run(tmp_path / "pope", {"random": ["Yes"] * 6}, "baseline")
    with pytest.raises(SystemExit, match="is a chair run and pope a pope run"):
        main(["compare", str(a), str(p)])
    with pytest.raises(SystemExit, match="RUN_B .*missing: no metrics.json"):
        main(["compare", str(a), str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--bootstrap must be >= 1"):
        main(["compare", str(a), str(b), "--bootstrap", "0"])


def test_compare_pope_mcnemar_on_hand_answers(tmp_path):
    # labels yes no yes no yes no; A right on 1-4 and wrong on 5-6; B right on 3-6 and wrong on 1-2
    a = pope_run(tmp_path / "a", {"random": ["Yes", "No", "Yes", "No", "No", "Yes"],
                                  "popular": ["Yes", "No", "Yes", "No", "Yes", "No"]}, "baseline")
    b = pope_run(tmp_path / "b", {"random": ["No", "Yes", "Yes", "No", "Yes", "No"],
                                  "popular": ["Yes", "No", "Yes", "No", "Yes", "No"]}, "pai")
    result = compare_pair(a, b, n_resamples=200, seed=0)
    rows = {r.metric: r for r in result.rows}
    # random: b (A right, B wrong) = 2, c = 2 -> exact p = 2 * P(X <= 2 | n=4) = 2 * 11/16, capped at 1
    assert rows["random.accuracy"].test == "McNemar exact (b=2, c=2)" and rows["random.accuracy"].p_value == 1.0
    assert rows["popular.accuracy"].test == "McNemar exact (b=0, c=0)"
    assert rows["average.accuracy"].test == "McNemar exact (b=2, c=2)"  # pooled over the splits
    assert rows["random.f1"].test == "paired bootstrap"
    assert rows["random.accuracy"].difference == 0.0 and result.n_samples == 12
    chi = compare_pair(a, b, n_resamples=50, seed=0, mcnemar_test="chi2")
    assert {r.metric: r for r in chi.rows}["random.accuracy"].test == "McNemar chi2 (b=2, c=2)"


def test_report_baseline_holm(tmp_path, capsys):
    base = chair_run(tmp_path / "base", BASE, "baseline")
    one = chair_run(tmp_path / "one", FEWER, "var")
    two = chair_run(tmp_path / "two", {**BASE, 4: "A car."}, "pai")
    found = compare_baseline(base, [one, two], n_resamples=300, seed=2)
    for index in range(len(found[0].rows)):
        ps = [c.rows[index].p_value for c in found]
        assert [c.rows[index].p_holm for c in found] == pytest.approx(stats.holm(ps))
    assert main(["report", str(base), str(one), str(two), "--baseline", str(base), "--bootstrap", "300",
                 "--bootstrap-seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "## Against the baseline base" in out and "Holm over the 2 runs per metric" in out
    assert "| run | metric | baseline | run's | B - A [95% CI] | p | test | p (Holm) |" in out
    tests = out.split("## Against the baseline base")[1]
    assert tests.count("| one | ") == 6 and tests.count("| two | ") == 6 and "| base | " not in tests
    with pytest.raises(SystemExit, match="no other chair run was given"):
        main(["report", str(base), "--baseline", str(base)])


def test_plot_needs_matplotlib(tmp_path, monkeypatch, capsys):
    run = chair_run(tmp_path / "base", BASE, "baseline")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run), "--plot", str(tmp_path / "f.png")])
    assert exc.value.code == 2 and "pip install matplotlib" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="must end in .png, .pdf, .svg"):
        main(["report", str(run), "--plot", str(tmp_path / "f.txt")])


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot_draws_both_tasks(tmp_path, capsys):
    runs = [chair_run(tmp_path / "cb", BASE, "baseline"), chair_run(tmp_path / "cv", FEWER, "var"),
            pope_run(tmp_path / "pb", {s: ["Yes", "No", "Yes", "Yes", "No", "No"] for s in ("random", "popular")},
                     "baseline"),
            pope_run(tmp_path / "pv", {s: ["Yes", "No", "Yes", "No", "Yes", "No"] for s in ("random", "popular")},
                     "var")]
    figure = tmp_path / "fig" / "report.png"
    assert main(["report", *map(str, runs), "--plot", str(figure), "--bootstrap", "100"]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from vlm_attn.eval.plot import method_colours

    colours = method_colours([load_run(r) for r in runs])
    assert list(colours) == ["baseline", "var"] and colours["baseline"] != colours["var"]
    assert np.all(np.isfinite(colours["var"]))


def test_report_without_per_sample_files_shows_values_and_says_why(tmp_path, capsys):
    bare = tmp_path / "bare"
    write_metrics(bare, metrics_record("chair", "baseline", "toy", {m: 0.5 for m in
                                                                    ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1")}
                                       | {"Len": 9.0}))
    assert main(["report", str(bare)]) == 0
    captured = capsys.readouterr()
    assert "| bare | baseline | toy | 50.0 | 50.0 |" in captured.out and "[" not in captured.out
    assert "no intervals for" in captured.err and "no chair_details.json" in captured.err
    run = chair_run(tmp_path / "full", BASE, "baseline")
    assert main(["report", str(run), "--no-intervals"]) == 0
    assert "| full | baseline | toy | 75.0 | 45.5 | 100.0 |" in capsys.readouterr().out


def test_recorded_intervals_warn_instead_of_failing(tmp_path, caplog):
    from vlm_attn.eval.report import recorded_intervals

    run = chair_run(tmp_path / "run", BASE, "baseline")
    record = _record(run)
    assert recorded_intervals(run, record)["n"] == {"all": 4}
    record["metrics"]["CHAIR_I"] = 0.1  # metrics.json and the per-caption file disagree
    assert recorded_intervals(run, record) is None
    assert "the per-sample records give CHAIR_I = 0.4545" in caplog.text


@pytest.mark.parametrize("argv", [["compare"], ["report"], ["tune"], ["tune", "chair"]])
def test_new_commands_have_help_with_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


def test_scored_answer_files_get_intervals_and_compare(tmp_path, capsys):
    """`vlm-attn score` results carry intervals like eval runs and can be compared like them."""
    questions = [("dog", "yes"), ("cat", "no"), ("bus", "no"), ("car", "yes")]
    outs = {"a": ["Yes", "Yes, a cat.", "No", "No"], "b": ["Yes", "No", "No", "Yes"]}
    for name, answers in outs.items():
        path = tmp_path / name / "pope_adversarial.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"question_id": i + 1, "question": f"Is there a {o} in the image?",
                                            "label": label, "answer": answer}) + "\n"
                                for i, ((o, label), answer) in enumerate(zip(questions, answers))))
        assert main(["score", "pope", "--answers", str(path), "--out", str(tmp_path / f"run-{name}"),
                     "--no-progress"]) == 0
    record = _record(tmp_path / "run-a")
    assert record["intervals"]["n"] == {"adversarial": 4}
    table = load_table(tmp_path / "run-a", record)
    want = stats.bootstrap(table.counts, stats.pope_statistic, 1000, 0, average="average")
    assert record["intervals"]["metrics"]["adversarial"]["accuracy"] == want["adversarial"]["accuracy"].as_list()
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "run-a"), str(tmp_path / "run-b")]) == 0
    # A right on 1, 3; B right on all four: b = 0, c = 2 -> exact p = 2 * P(X <= 0 | n=2) = 0.5
    assert "| run-b | adversarial.accuracy | 50.0 | 100.0 |" in capsys.readouterr().out
    assert compare_pair(tmp_path / "run-a", tmp_path / "run-b").rows[0].p_value == 0.5
