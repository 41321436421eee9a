"""Head-specific modulation (issue 3): calibration, the JSON record, model checks, alpha_{l,h}, uniform = PAINT."""

import json

import pytest
import torch

import vlm_attn
from vlm_attn.cli import main
from vlm_attn.passes.head_calibration import calibrate_heads
from vlm_attn.methods.heads import HeadSensitivity, config_hash
from vlm_attn.prompting import build_inputs
from vlm_attn.testing.tiny import tiny_path

from .conftest import make_image


def test_calibration_json_round_trips_and_is_refused_elsewhere(load, tmp_path):
    model, proc = load("llava")
    hs = calibrate_heads(model, proc, [make_image(0), make_image(1)], n=3, progress=False)
    assert hs.matrix.shape == (4, 4) and (hs.matrix > 0).all()
    assert hs.config_hash == config_hash(model.config) and hs.recipe["n"] == 3
    path = tmp_path / "heads.json"
    hs.save(path)
    back = HeadSensitivity.load(path)
    assert torch.equal(back.matrix, hs.matrix) and back.recipe == hs.recipe and back.model_name == hs.model_name
    assert not model._forward_pre_hooks  # calibration leaves the model as it was

    other, _ = load("qwen2_vl")
    with pytest.raises(ValueError, match="recalibrate for this model"):
        vlm_attn.apply(other, vlm_attn.PAINTConfig(head_sensitivity=str(path)))
    assert other.config.text_config._attn_implementation == "sdpa"


def test_head_alphas_follow_the_formula(load):
    model, _ = load("llava")
    matrix = torch.tensor([[9.0, 9, 9, 9], [9, 9, 9, 9], [0.1, 0.2, 0.4, 0.8], [0.05, 0.3, 0.6, 0.2]])
    hs = HeadSensitivity("m", config_hash(model.config), matrix)
    cfg = vlm_attn.PAINTConfig(alpha=0.7, head_sensitivity=hs, kappa=2.0)
    with vlm_attn.apply(model, cfg) as handle:
        got = handle.engine.methods[0]._head_alpha
    peak = 0.8  # max over the steered layers 2..L-1 only
    expected = torch.zeros(4, 4)
    expected[2:] = 0.7 * (matrix[2:] / peak) ** 2
    torch.testing.assert_close(got, expected)
    top = vlm_attn.PAINTConfig(alpha=0.7, head_sensitivity=hs, head_top_fraction=0.25).head_alphas(model.config)
    assert int((top > 0).sum()) == 2 and top[2, 3] > 0 and top[3, 2] > 0


def test_uniform_sensitivity_reproduces_paint(load):
    model, proc = load("llava")
    batch = build_inputs(proc, [make_image(0)], ["describe the image in detail"])
    hs = HeadSensitivity("m", config_hash(model.config), torch.ones(4, 4))
    outs = []
    for extra in ({}, {"head_sensitivity": hs}):
        with vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False, **extra)):
            with torch.no_grad():
                outs.append(model(**batch).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)


def test_cli_calibrate_heads(tiny_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        make_image(i).save(images / f"{i}.png")
    out = tmp_path / "heads.json"
    assert main(["calibrate-heads", "--model", "tiny-llava", "--images", str(images), "--n", "2",
                 "--out", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["recipe"]["images"] == ["0.png", "1.png"] and record["num_layers"] == 4
    assert "heads.json" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such folder"):
        main(["calibrate-heads", "--model", "tiny-llava", "--images", str(tmp_path / "nope"), "--out", str(out)])


def test_cli_generate_pai_and_paint(tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))
    assert main(["generate", "--model", "tiny-qwen2_vl", "--method", "pai", "--method", "paint",
                 "--max-new-tokens", "4", "--no-vanilla", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("== report ==")[1])
    assert report["pai"]["active"] and "paint" in report
