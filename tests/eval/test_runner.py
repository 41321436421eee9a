"""The evaluation runner: shard slicing, crash-safe JSONL, resume checks, 2-process == 1-process, bad images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_attn.eval import pope
from vlm_attn.eval.runner import (
    DistContext,
    JsonlWriter,
    RunDir,
    RunDirError,
    generate_shard,
    Sample,
    read_records,
    run_samples,
    shard_samples,
)
from vlm_attn.eval.coco import coco_val2014
from vlm_attn.eval.tasks import RunOptions, chair_samples, pope_samples, run_pope
from vlm_attn.testing.tiny import load_tiny


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """tiny-llava loaded once for the module (generation only; nothing here mutates it)."""
    return load_tiny("llava", tmp_path_factory.mktemp("runner_tiny"))


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", prompt="p", image=f"/nowhere/{i}.jpg") for i in range(n)]


@pytest.mark.parametrize("n,world", [(0, 2), (1, 3), (7, 2), (10, 3), (5, 1)])
def test_shards_partition_the_samples(n, world):
    samples = _samples(n)
    shards = [shard_samples(samples, r, world) for r in range(world)]
    ids = [s.id for shard in shards for s in shard]
    assert sorted(ids) == sorted(s.id for s in samples) and len(ids) == len(set(ids))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank must lie"):
        shard_samples(samples, world, world)


def test_truncated_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "samples.rank0.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "a", "output": "x"})
        w.write({"id": "b", "output": "y"})
    with open(path, "a") as f:
        f.write('{"id": "c", "outp')  # a kill in the middle of a write
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert path.read_text().endswith('"outp')  # reading alone does not modify
    read_records(path, repair=True)
    with JsonlWriter(path) as w:
        w.write({"id": "c", "output": "z"})
    assert [r["id"] for r in read_records(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="rank0.jsonl:2"):
        read_records(path)


def test_run_dir_refuses_overwrite_and_changed_settings(tmp_path):
    rd = RunDir(tmp_path / "run")
    settings = {"task": "pope", "model": "m", "methods": [], "max_new_tokens": 8}
    rd.check(settings, resume=False)  # missing dir is fine
    rd.prepare(settings)
    with pytest.raises(RunDirError, match="not empty.*--resume"):
        rd.check(settings, resume=False)
    rd.check(settings, resume=True)
    with pytest.raises(RunDirError, match="--max-new-tokens: run has 8, now 16"):
        rd.check({**settings, "max_new_tokens": 16}, resume=True)


def test_two_processes_merge_to_the_one_process_result(llava, toy_coco, tmp_path):
    """The slicing of an accelerate job, run rank by rank in this process: same merged records as one process."""
    model, processor = llava
    samples = chair_samples(coco_val2014(toy_coco), [1, 2, 3]) + [
        Sample(id="extra", prompt="What is in the image?", image=toy_coco / "val2014" / "COCO_val2014_000000000002.jpg")
    ]
    settings = {"task": "chair", "model": "tiny-llava", "methods": [], "prompt": "p"}
    one = run_samples(model, processor, samples, tmp_path / "one", settings, batch_size=2, max_new_tokens=6,
                      progress=False)
    rd = RunDir(tmp_path / "two")
    rd.prepare(settings)  # what the main process does between the barriers of run_samples
    for rank in (1, 0):
        generate_shard(model, processor, samples, rd, DistContext(rank=rank, world=2), batch_size=2,
                       max_new_tokens=6, progress=False)
    assert rd.merge(samples) == one and [r["id"] for r in one] == [s.id for s in samples]
    assert (tmp_path / "two" / "samples.jsonl").read_text() == (tmp_path / "one" / "samples.jsonl").read_text()
    shard_ids = [[r["id"] for r in read_records(tmp_path / "two" / f"samples.rank{k}.jsonl")] for k in (0, 1)]
    assert shard_ids == [["1", "3"], ["2", "extra"]]


def test_bad_images_are_recorded_and_the_batch_goes_on(llava, toy_coco, toy_pope, tmp_path):
    model, processor = llava
    (toy_coco / "val2014" / "COCO_val2014_000000000002.jpg").write_bytes(b"not a jpeg")
    (toy_coco / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    splits = pope.load_pope_dir(toy_pope, ["random"])
    record = run_pope(model, processor, "tiny-llava", splits, tmp_path / "run", coco_root=toy_coco,
                      options=RunOptions(batch_size=4, max_new_tokens=4, progress=False))
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"random/{i}" for i in (1, 2, 3, 4)]
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"random/3", "random/4"}  # image 2: unreadable; questions 1-2 are on image 1
    assert "cannot read image" in errors["random/3"]
    assert record["metrics"]["n_errors"] == 2 and record["metrics"]["random"]["n"] == 2
    assert [e["id"] for e in record["provenance"]["errors"]] == ["random/3", "random/4"]


def test_missing_image_file_is_an_error_record(llava, toy_coco, tmp_path):
    model, processor = llava
    samples = chair_samples(coco_val2014(toy_coco), [1, 99])
    records = run_samples(model, processor, samples, tmp_path / "r", {"task": "chair"}, max_new_tokens=3,
                          progress=False)
    assert "output" in records[0] and "image file not found" in records[1]["error"]


def test_pope_samples_need_images(toy_pope):
    splits = pope.load_pope_dir(toy_pope, ["random"])
    with pytest.raises(ValueError, match="--coco-root"):
        pope_samples(splits, None)
    samples = pope_samples(splits, coco_val2014(Path("/c")), limit=2)
    assert [s.id for s in samples] == ["random/1", "random/2"]
    assert samples[0].prompt == "Is there a dog in the image?\nAnswer the question using a single word or phrase."


def test_a_sample_the_processor_rejects_does_not_sink_its_batch(llava, toy_coco, tmp_path, monkeypatch):
    from vlm_attn.eval import runner

    real = runner.generate_batch

    def picky(model, processor, images, prompts, max_new_tokens, *decoding):
        if any("BAD" in p for p in prompts):
            raise ValueError("image too small for the processor")
        return real(model, processor, images, prompts, max_new_tokens, *decoding)

    monkeypatch.setattr(runner, "generate_batch", picky)
    model, processor = llava
    image = toy_coco / "val2014" / "COCO_val2014_000000000001.jpg"
    samples = [Sample(id=str(i), prompt="BAD" if i == 1 else "Describe.", image=image) for i in range(3)]
    records = run_samples(model, processor, samples, tmp_path / "r", {"task": "chair"}, batch_size=3,
                          max_new_tokens=3, progress=False)
    assert ["error" in r for r in records] == [False, True, False]
    assert "too small" in records[1]["error"] and all("output" in records[i] for i in (0, 2))
