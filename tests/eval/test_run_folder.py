"""Run folders: one writer at a time (a held lock refuses a second run; a killed holder does not block resume),
--resume --retry-errors replaces error records, a refused resume names the flag, and a label fixed before a
resume is the label of both samples.jsonl and the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_attn.eval import pope
from vlm_attn.eval.runner import RunDir, read_records, settings_diff

from .test_inputs import refusal

FAST = ["--max-new-tokens", "4", "--no-progress"]



def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pope(toy_coco: Path, toy_pope: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "pope", "--model", "tiny-llava", "--pope-file", str(toy_pope / "coco_pope_random.jsonl"),
            "--coco-root", str(toy_coco), "--out", str(out), *FAST, *extra]


def _forbid_model(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("vlm_attn.loading.load_model", forbidden)


HOLD = """
import sys, time
from vlm_attn.eval.runner import RunDir
with RunDir(sys.argv[1]).writer_lock(0):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_held_run_folder_is_refused_and_a_killed_holder_does_not_block(
    cache_env, toy_coco, toy_pope, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    from vlm_attn.cli import main

    assert main(_pope(toy_coco, toy_pope, out)) == 0
    shard = out / "samples.rank0.jsonl"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:2]))  # as if killed after two samples
    before = shard.read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env={**cache_env, "PYTHONPATH": os.getcwd()},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with monkeypatch.context() as m:
            _forbid_model(m)  # refused before the model is loaded
            message = refusal(_pope(toy_coco, toy_pope, out, "--resume"), capsys)
        assert message.endswith(f"run folder {out} is being written by another run (pid {holder.pid} on "
                                f"{os.uname().nodename}, shard 0); wait for it to end or stop it, then --resume")
        assert shard.read_text() == before  # nothing generated
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock died with it: the resume runs, generating only the two new questions
    assert main(_pope(toy_coco, toy_pope, out, "--resume")) == 0
    ids = [r["id"] for r in read_records(shard)]
    assert ids == [f"random/{i}" for i in (1, 2, 3, 4)]
    with pytest.raises(SystemExit, match=r"not empty \((metrics\.json|run\.json|samples)[^.]*\.json"):
        main(_pope(toy_coco, toy_pope, out))  # the lock files are not counted as content


def test_retry_errors_replaces_the_error_records(cache_env, toy_coco, toy_pope, tmp_path, monkeypatch):
    from vlm_attn.cli import main

    image = toy_coco / "val2014" / "COCO_val2014_000000000002.jpg"
    good = image.read_bytes()
    image.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    assert main(_pope(toy_coco, toy_pope, out)) == 0
    shard = out / "samples.rank0.jsonl"
    assert [r["id"] for r in _records(shard) if "error" in r] == ["random/3", "random/4"]
    first = _records(shard)

    with monkeypatch.context() as m:  # a plain resume keeps the errors and generates nothing
        m.setattr("vlm_attn.eval.runner.generate_batch", lambda *a, **k: pytest.fail("generated"))
        assert main(_pope(toy_coco, toy_pope, out, "--resume")) == 0
    assert _records(shard) == first

    image.write_bytes(good)
    assert main(_pope(toy_coco, toy_pope, out, "--resume", "--retry-errors")) == 0
    rows = _records(shard)
    assert [r["id"] for r in rows] == [f"random/{i}" for i in (1, 2, 3, 4)]  # each once, error records gone
    assert rows[:2] == [r for r in first if "error" not in r]  # the finished samples are kept as they were
    assert all("output" in r and "error" not in r for r in rows)
    merged = _records(out / "samples.jsonl")
    assert merged == rows
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["n_errors"] == 0 and metrics["metrics"]["random"]["n"] == 4
    assert metrics["provenance"]["errors"] == []


def test_a_refused_resume_names_the_flag_and_both_values(cache_env, toy_coco, toy_pope, tmp_path, capsys, monkeypatch):
    from vlm_attn.cli import main

    out = tmp_path / "run"
    assert main(_pope(toy_coco, toy_pope, out, "--limit", "1", "--seed", "2")) == 0
    shard_before = (out / "samples.rank0.jsonl").read_text()
    with monkeypatch.context() as m:
        _forbid_model(m)
        for flags, expected in [
            (["--limit", "3", "--seed", "2"], "(--limit: run has 1, now 3)"),
            (["--limit", "1"], "(--seed: run has 2, now 0)"),
            (["--limit", "1", "--seed", "2", "--prompt", "{question}"],
             r"(--prompt: run has '{question}\nAnswer the question using a single word or phrase.', now '{question}')"),
            (["--limit", "1", "--seed", "2", "--max-new-tokens", "9"], "(--max-new-tokens: run has 4, now 9)"),
        ]:
            message = refusal(_pope(toy_coco, toy_pope, out, "--resume", *flags), capsys)
            assert f"cannot resume {out} with different settings {expected}; rerun with the original" in message, \
                message
    # the methods are compared once the model is there, still before anything is generated
    message = refusal(_pope(toy_coco, toy_pope, out, "--resume", "--limit", "1", "--seed", "2", "--method", "pai"),
                      capsys)
    assert "(--method: run has baseline, now pai)" in message
    assert (out / "samples.rank0.jsonl").read_text() == shard_before


def test_settings_diff_per_field():
    var = {"name": "var", "class": "VARConfig", "config": {"p": 0.6, "rho": 0.5}}
    old = {"methods": [var], "limit": None, "num_images": 500, "samples_sha256": "a"}
    new = {"methods": [{**var, "config": {"p": 0.4, "rho": 0.5}}], "limit": None, "num_images": 300,
           "samples_sha256": "b"}
    assert settings_diff(old, new) == ["--method-config var.p: run has 0.6, now 0.4",
                                       "--num-images: run has 500, now 300"]
    assert settings_diff(old, {**old, "samples_sha256": "b"}) == [
        "the sample list: its ids or prompts differ from the run's (the question files or the image list changed "
        "since it started)"]
    assert settings_diff(old, {"limit": 5}) == ["--limit: run has None, now 5"]
    assert settings_diff({"seed": 1}, {"limit": 5, "seed": 1}) == []  # keys an older run.json lacks are skipped


def test_a_label_fixed_before_resume_is_used_by_records_and_metrics(cache_env, toy_coco, toy_pope, tmp_path):
    """Outputs do not depend on the label: the resume keeps them, and both samples.jsonl and the metrics use the
    question file as it is now."""
    from vlm_attn.cli import main

    questions = toy_pope / "coco_pope_random.jsonl"
    out = tmp_path / "run"
    assert main(_pope(toy_coco, toy_pope, out)) == 0
    outputs = {r["id"]: r["output"] for r in _records(out / "samples.jsonl")}
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    assert rows[0]["label"] == "yes"
    rows[0]["label"] = "no"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert main(_pope(toy_coco, toy_pope, out, "--resume")) == 0
    merged = _records(out / "samples.jsonl")
    assert {r["id"]: r["output"] for r in merged} == outputs  # nothing regenerated
    assert [r["label"] for r in merged] == [r["label"] for r in rows]
    assert _records(out / "samples.rank0.jsonl")[0]["label"] == "yes"  # the shard keeps what was generated
    expected = pope.pope_metrics([r["label"] for r in rows], [outputs[f"random/{r['question_id']}"] for r in rows])
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]["random"]
    assert {k: metrics[k] for k in ("tp", "fp", "tn", "fn", "accuracy")} == {
        k: expected[k] for k in ("tp", "fp", "tn", "fn", "accuracy")}


def test_run_dir_lock_is_reentrant_and_names_its_holder(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.writer_lock(0):
        with rd.writer_lock(0):  # the CLI holds it while run_samples takes it again
            pass
        with rd.writer_lock(1):  # another shard's lock is independent
            pass
        assert (tmp_path / "run" / ".writer.rank0.pid").read_text().startswith(f"pid {os.getpid()} on ")
    rd.check({}, resume=False)  # lock files alone do not make the folder "not empty"


def test_duplicate_sample_ids_are_named_before_anything_runs(tmp_path):
    from vlm_attn.errors import UserError
    from vlm_attn.eval.runner import Sample, run_samples

    samples = [Sample(id=i, prompt="p", image="x.jpg") for i in ("a", "b", "a")]
    with pytest.raises(UserError, match="the sample list: sample id 'a' occurs twice; sample ids must be unique"):
        run_samples(None, None, samples, tmp_path / "run", {"task": "chair"})
    assert not (tmp_path / "run").exists()
