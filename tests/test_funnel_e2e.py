"""Visual Funnel and ViCrop end to end on tiny models (issue 4): anchoring, answer turn, CLI, bad input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import vlm_attn
from vlm_attn.cli import main
from vlm_attn.passes.anchor import capture_anchor_map
from vlm_attn.patches import get_adapter
from vlm_attn.patches.llava import LlavaAdapter
from vlm_attn.prompting import build_inputs

from .conftest import make_image

FAMILIES = ["llava", "qwen2_5_vl"]
QUESTION = "what color is the car?"


def image_tokens_seen(model):
    """Record the image-token count of every forward that starts from an empty cache."""
    adapter, seen = get_adapter(model), []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if ids is not None and (cache is None or cache.get_seq_length() == 0):
            seen.append(int(adapter.image_mask(ids, kwargs).sum()))

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_anchor_map_matches_output_attentions_at_one_layer(load, family, image):
    model, proc = load(family)
    batch = build_inputs(proc, [image], ["where should I look?"])
    anchor = capture_anchor_map(model, batch, layer=1)
    assert anchor.captured_layers == (1,)  # one layer's row only, no output_attentions
    assert model.config.text_config._attn_implementation == "sdpa" and not model._forward_pre_hooks
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(**batch, output_attentions=True).attentions[1][0, :, -1].mean(0)
    mask = get_adapter(model).image_mask(batch["input_ids"], dict(batch))[0]
    ref = ref[mask][anchor.grid.start : anchor.grid.start + anchor.grid.cells].reshape(anchor.grid.shape)
    torch.testing.assert_close(anchor.raw, ref, atol=1e-6, rtol=1e-5)
    assert abs(float(anchor.attention.sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_funnel_sends_four_images_and_boxes_lie_inside(load, family):
    model, proc = load(family)
    picture = make_image(3, (90, 70))
    seen, hook = image_tokens_seen(model)
    try:
        result = vlm_attn.generate(model, proc, picture, QUESTION, methods=[vlm_attn.FunnelConfig()], vqa=True,
                                   max_new_tokens=3)
    finally:
        hook.remove()
    assert result.method == "funnel" and result.image_names == ["original", "focal", "alpha1", "alpha2"]
    assert len(result.images) == 4
    # The answer prompt carries the tokens of four images: as many as four single-image prompts.
    single = [int(get_adapter(model).image_mask(b["input_ids"], dict(b)).sum())
              for b in (build_inputs(proc, [im], ["x"]) for im in result.images)]
    assert seen[-1] == result.image_tokens == sum(single)
    assert seen[0] == single[0]  # the anchoring pass saw the original image only
    gh, gw = result.attention.shape
    assert (gh, gw) == get_adapter(model).image_grid(build_inputs(proc, [picture], ["x"])).shape
    assert 0.0 <= result.entropy <= 1.0
    for left, top, right, bottom in result.boxes:
        assert 0 <= left < right <= 90 and 0 <= top < bottom <= 70
    data = result.to_dict()
    assert data["boxes"] == [list(b) for b in result.boxes] and isinstance(result.text, str)


@pytest.mark.parametrize("family", FAMILIES)
def test_vicrop_original_plus_one_crop(load, family, image):
    model, proc = load(family)
    result = vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.ViCropConfig()], max_new_tokens=2)
    assert result.image_names == ["original", "crop"] and len(result.boxes) == 1
    left, top, right, bottom = result.boxes[0]
    assert 0 <= left < right <= image.width and 0 <= top < bottom <= image.height
    assert result.decision.relative.shape == result.decision.question.attention.shape


def test_composes_with_attention_methods_and_existing_handle(load, image):
    model, proc = load("llava")
    var = vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0)
    result = vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig(), var],
                               max_new_tokens=2)
    assert result.decision.anchor.steered and result.report["var"]["active"]
    assert not model._forward_pre_hooks  # applied for the call only
    with vlm_attn.apply(model, var) as handle:
        methods = list(handle.engine.methods)
        steered = vlm_attn.funnel_decide(model, proc, image, QUESTION)
        assert handle.engine.methods == methods and handle.active  # the capture left the engine as it was
        assert steered.anchor.steered and steered.anchor.captured_layers == (steered.anchor.layer,)
        with pytest.raises(RuntimeError, match="already applied"):
            vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig(), var])
    with vlm_attn.apply(model, []):  # an engine without methods: the anchoring map is the unsteered one
        plain = vlm_attn.funnel_decide(model, proc, image, QUESTION)
    unpatched = vlm_attn.funnel_decide(model, proc, image, QUESTION)
    assert not plain.anchor.steered and torch.equal(plain.attention, unpatched.attention)


def test_tiny_image_and_image_modes(load):
    model, proc = load("qwen2_5_vl")
    small = make_image(1, (20, 14))
    for picture in (small, small.convert("L"), small.convert("RGBA")):
        result = vlm_attn.generate(model, proc, picture, QUESTION, methods=[vlm_attn.FunnelConfig()],
                                   max_new_tokens=1)
        assert all(im.mode == "RGB" for im in result.images)
        assert result.decision.portfolio.sides == (14, 14, 14)  # 224 capped at the shorter side


def test_model_without_multi_image_turns(load, image, monkeypatch):
    model, proc = load("llava")
    monkeypatch.setattr(LlavaAdapter, "max_images_per_turn", 2)
    with pytest.raises(ValueError, match="fallback='crops_only'.*fallback='vicrop'"):
        vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig()])
    result = vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig(fallback="vicrop")],
                               max_new_tokens=1)
    assert result.image_names == ["original", "focal"]
    with pytest.raises(ValueError, match="at most 2 image"):
        vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig(fallback="crops_only")])
    monkeypatch.setattr(LlavaAdapter, "max_images_per_turn", 1)
    with pytest.raises(ValueError, match="at most 1 image"):
        vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.ViCropConfig()])


def test_bad_arguments(load, image):
    model, proc = load("llava")
    with pytest.raises(ValueError, match="one image"):
        vlm_attn.generate(model, proc, [image, image], QUESTION, methods=[vlm_attn.FunnelConfig()])
    with pytest.raises(ValueError, match="at most one input-level"):
        vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig(), vlm_attn.ViCropConfig()])
    with pytest.raises(ValueError, match="out of range"):
        vlm_attn.funnel_decide(model, proc, image, QUESTION, vlm_attn.FunnelConfig(anchor_layer=99))
    with pytest.raises(ValueError, match="no image tokens"):
        capture_anchor_map(model, proc(text=["no image here"], return_tensors="pt"))


def test_cli_generate_funnel_and_inspect_png(tiny_cache, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))
    assert main(["generate", "--model", "tiny-llava", "--method", "funnel", "--vqa", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "== vanilla ==" in out and "== funnel ==" in out and "images sent: original, focal, alpha1, alpha2" in out
    png = tmp_path / "look.png"
    assert main(["inspect", "--model", "tiny-qwen2_5_vl", "--prompt", QUESTION, "--out", str(png), "--crops"]) == 0
    assert png.stat().st_size > 0
    with Image.open(png) as figure:
        assert figure.format == "PNG" and figure.width > 4 * 20
    assert "entropy" in capsys.readouterr().out
    png2 = tmp_path / "vicrop.png"
    assert main(["inspect", "--model", "tiny-llava", "--method", "vicrop", "--out", str(png2), "--json"]) == 0
    assert png2.stat().st_size > 0
