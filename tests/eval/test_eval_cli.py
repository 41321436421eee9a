"""`vlm-attn eval chair|pope` and `vlm-attn report` end to end on tiny-llava and the toy COCO: metrics.json and
its provenance, refusing to overwrite, kill + --resume in a real subprocess, and a real 2-process accelerate run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm_attn.cli import main

FAST = ["--max-new-tokens", "8", "--no-progress"]



def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pope_args(toy_coco: Path, toy_pope: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "pope", "--model", "tiny-llava", "--pope-dir", str(toy_pope), "--coco-root", str(toy_coco),
            "--out", str(out), *FAST, *extra]


def test_eval_pope_end_to_end_and_report(cache_env, toy_coco, toy_pope, tmp_path, capsys):
    out = tmp_path / "runs" / "pope-base"
    assert main(_pope_args(toy_coco, toy_pope, out, "--limit", "1", "--batch-size", "3", "--seed", "3")) == 0
    assert "| pope-base | baseline | tiny-llava |" in capsys.readouterr().out
    record = json.loads((out / "metrics.json").read_text())
    assert (record["task"], record["method"], record["model"]) == ("pope", "baseline", "tiny-llava")
    assert set(record["metrics"]) >= {"random", "popular", "adversarial", "average", "n_errors"}
    assert record["metrics"]["average"]["n"] == 3 and record["metrics"]["n_errors"] == 0
    prov = record["provenance"]
    assert prov["dataset"]["random"]["sha256"] and prov["dataset"]["random"]["n_questions"] == 4
    assert prov["seed"] == 3 and prov["generation"]["max_new_tokens"] == 8 and prov["limit_per_split"] == 1
    assert prov["versions"]["torch"] and prov["versions"]["transformers"] and prov["started"] and prov["finished"]
    assert prov["model"]["id"] == "tiny-llava" and prov["methods"] == [] and prov["parse_mode"] == "official"
    assert prov["image_list"] == ["COCO_val2014_000000000001.jpg"]
    assert prov["arguments"]["pope_dir"] == str(toy_pope) and prov["arguments"]["limit"] == 1
    assert [r["id"] for r in _records(out / "samples.jsonl")] == [
        f"{s}/1" for s in ("random", "popular", "adversarial")]

    with pytest.raises(SystemExit, match="not empty.*--resume"):
        main(_pope_args(toy_coco, toy_pope, out, "--limit", "1"))
    with pytest.raises(SystemExit, match="different settings.*--max-new-tokens: run has 8, now 4"):
        main(_pope_args(toy_coco, toy_pope, out, "--limit", "1", "--resume", "--max-new-tokens", "4"))

    (tmp_path / "runs" / "unfinished").mkdir()
    csv_path = tmp_path / "cmp.csv"
    assert main(["report", str(out), str(tmp_path / "runs" / "unfinished"), "--csv", str(csv_path)]) == 0
    captured = capsys.readouterr()
    assert "average.accuracy" in captured.out and "skipping" in captured.err
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["run"] == "pope-base"
    assert float(rows[0]["average.accuracy"]) == record["metrics"]["average"]["accuracy"]


def test_eval_chair_end_to_end_with_method(cache_env, toy_coco, tmp_path, capsys):
    out = tmp_path / "chair-var"
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"var": {"rho": 0.0}}))
    assert main(["eval", "chair", "--model", "tiny-llava", "--method", "var", "--method-config", str(cfg),
                 "--coco-root", str(toy_coco), "--out", str(out), "--num-images", "2", "--seed", "1",
                 "--lemmatizer", "offline", *FAST]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["task"] == "chair" and record["method"] == "var"
    assert set(record["metrics"]) >= {"CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len"}
    prov = record["provenance"]
    ids = json.loads((out / "image_list.json").read_text())["image_ids"]
    assert len(ids) == 2 and prov["image_list"]["image_ids"] == ids and prov["image_list"]["seed"] == 1
    assert prov["methods"][0]["name"] == "var" and prov["methods"][0]["config"]["rho"] == 0.0
    assert prov["lemmatizer"] == "offline" and len(prov["dataset"]["instances_sha256"]) == 64
    assert [c["image_id"] for c in json.loads((out / "chair_details.json").read_text())["captions"]] == ids
    assert "| chair-var | var | tiny-llava |" in capsys.readouterr().out

    listed = tmp_path / "list.txt"
    listed.write_text("COCO_val2014_000000000003.jpg\n# comment\n1\n")
    out2 = tmp_path / "chair-list"
    main(["eval", "chair", "--model", "tiny-llava", "--coco-root", str(toy_coco), "--out", str(out2),
          "--image-list", str(listed), *FAST])
    assert json.loads((out2 / "image_list.json").read_text())["image_ids"] == [3, 1]


def test_missing_inputs_have_clear_errors(cache_env, toy_coco, tmp_path):
    with pytest.raises(SystemExit, match="coco_pope_<split>"):
        main(["eval", "pope", "--model", "tiny-llava", "--pope-dir", str(tmp_path / "nope"), "--coco-root",
              str(toy_coco), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="COCO file not found.*instances_val2014.json.*annotations_trainval2014"):
        main(["eval", "chair", "--model", "tiny-llava", "--coco-root", str(tmp_path), "--out", str(tmp_path / "o")])


def test_killed_run_resumes_without_losing_or_repeating(cache_env, toy_coco, toy_pope, tmp_path):
    out = tmp_path / "run"
    # all 12 questions, one per batch: the run cannot finish before the kill even on a loaded machine
    args = _pope_args(toy_coco, toy_pope, out, "--batch-size", "1", "--limit", "4")
    cmd = [sys.executable, "-m", "vlm_attn.cli", *args]
    shard = out / "samples.rank0.jsonl"
    proc = subprocess.Popen(cmd, env=cache_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (shard.exists() and shard.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no sample finished within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    before = _records(shard)
    assert 1 <= len(before) < 12
    with open(shard, "a") as f:
        f.write('{"id": "adversarial/2", "out')  # as if killed in the middle of a write

    res = subprocess.run(cmd + ["--resume"], env=cache_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ids = [r["id"] for r in _records(shard)]
    expected = [f"{s}/{q}" for s in ("random", "popular", "adversarial") for q in (1, 2, 3, 4)]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids)) == 12
    assert _records(shard)[: len(before)] == before  # finished samples kept as they were
    assert [r["id"] for r in _records(out / "samples.jsonl")] == expected
    assert json.loads((out / "metrics.json").read_text())["metrics"]["average"]["n"] == 12


def test_accelerate_two_processes_match_one_process(cache_env, toy_coco, toy_pope, tmp_path):
    """A real `accelerate launch` with 2 CPU processes (gloo): each writes its shard; the merge equals 1 process."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--limit", "2", "--batch-size", "1"]
    assert main(_pope_args(toy_coco, toy_pope, one, *args)) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "vlm_attn.cli", *_pope_args(toy_coco, toy_pope, two, *args)]
    env = {**cache_env, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name for p in two.glob("samples.rank*.jsonl")} == {"samples.rank0.jsonl", "samples.rank1.jsonl"}
    assert _records(two / "samples.jsonl") == _records(one / "samples.jsonl")
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["metrics"] == m1["metrics"] and m2["provenance"]["world_size"] == 2


@pytest.mark.parametrize("method", ["funnel", "vicrop"])
def test_eval_with_input_level_method(cache_env, toy_coco, toy_pope, tmp_path, capsys, method):
    """Funnel / ViCrop run inside eval (one sample at a time, each with its own crops), composed with VAR."""
    out = tmp_path / f"pope-{method}"
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"var": {"sink_dims": [0, 1, 2, 3], "tau": 2.0}}))
    assert main(_pope_args(toy_coco, toy_pope, out, "--limit", "1", "--method", method, "--method", "var",
                           "--method-config", str(cfg))) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["metrics"]["n_errors"] == 0
    assert {m["name"] for m in record["provenance"]["methods"]} == {method, "var"}
    rows = _records(out / "samples.jsonl")
    expected_images = 4 if method == "funnel" else 2
    assert all(len(r["decision"]["images"]) == expected_images and r["decision"]["boxes"] for r in rows)
