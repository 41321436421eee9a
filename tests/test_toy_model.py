"""The shipped toy VLM (issue 7): on held-out toy images it sees the objects and hallucinates the biased partners."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vlm_attn.eval.chair import CHAIR
from vlm_attn.loading import TOY_MODEL, load_model, toy_model_path
from vlm_attn.prompting import build_inputs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_toy_coco.py"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A fresh toy val split from a seed the model never saw (the shipped model trained on seed 0's train split)."""
    spec = importlib.util.spec_from_file_location("make_toy_coco", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_toy_coco(tmp_path_factory.mktemp("toy"), n_train=20, n_val=60, seed=123)


def test_toy_model_ships_small_and_loads():
    path = toy_model_path()
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 10 * 2**20
    model, processor = load_model(TOY_MODEL)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"


def test_toy_model_sees_and_hallucinates(held_out):
    torch.set_num_threads(1)
    model, processor = load_model(TOY_MODEL)
    inst = json.loads((held_out / "annotations" / "instances_val2014.json").read_text())
    caps = json.loads((held_out / "annotations" / "captions_val2014.json").read_text())
    images = inst["images"]
    captions = []
    for start in range(0, len(images), 20):
        chunk = images[start : start + 20]
        batch = build_inputs(processor, [held_out / "val2014" / im["file_name"] for im in chunk],
                             ["Please describe this image in detail."] * len(chunk))
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=40, do_sample=False)
        texts = processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        captions += [{"image_id": im["id"], "caption": t} for im, t in zip(chunk, texts)]
    chair = CHAIR.from_coco(inst, caps, lemmatizer="offline")
    metrics = chair.evaluate(captions).metrics
    assert metrics["Recall"] >= 0.8, metrics
    assert metrics["CHAIR_I"] >= 0.02, metrics
