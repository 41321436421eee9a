"""Visual Funnel and ViCrop on every supported family (issue 6): grids, anchoring, answer turns, fallbacks.

Each family locates one image's whole-image token grid its own way (`FamilyAdapter.image_grid`):
- llava, llava_next, llava_onevision, paligemma: the base patch grid (paligemma: images back to back at the start).
- qwen2_vl, qwen2_5_vl, qwen3_vl: the merged grid of `image_grid_thw` (patch 14 or 16, merge 2).
- idefics3, smolvlm: the global image's run, right after `<global-img>` (tiles come first).
- gemma3: the soft-token block after `<start_of_image>` (mm_tokens_per_image = 16 = 4 x 4 on the tiny model).
- internvl: the thumbnail, the last tile of the image's `<img> ... </img>` run.
The answer turn is checked by counting image *starts* per family, not image tokens: LLaVA-NeXT / OneVision give one
image anyres tiles but several images of one turn a base grid each, so token counts of single-image prompts do not add.
"""

from __future__ import annotations

import pytest
import torch

import vlm_attn
from vlm_attn.passes.anchor import capture_anchor_map
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .conftest import CORE_FAMILIES, make_image

NEW_FAMILIES = ["llava_onevision", "qwen3_vl", "idefics3", "smolvlm", "gemma3", "paligemma", "internvl"]
ALL_FAMILIES = CORE_FAMILIES + NEW_FAMILIES
QUESTION = "what color is the car?"
# The whole-image grid of the default 80 x 60 test image on each tiny model (worked out by hand in the comments).
EXPECTED_GRID = {
    "llava": (6, 6),  # 48 / 8
    "llava_next": (6, 6),
    "qwen2_vl": (2, 3),  # resized to 84 x 56 -> 6 x 4 patches of 14 -> merged 2 x 3
    "qwen2_5_vl": (2, 3),
    "llava_onevision": (6, 6),  # SigLIP 48 / 8, no CLS
    "qwen3_vl": (4, 5),  # min_pixels 128^2: resized to 160 x 128 -> 10 x 8 patches of 16 -> merged 4 x 5
    "idefics3": (3, 3),  # 48 / 8 = 6, pixel shuffle 2 -> 3
    "smolvlm": (3, 3),
    "gemma3": (4, 4),  # 16 soft tokens
    "paligemma": (6, 6),
    "internvl": (4, 4),  # 32 / 4 = 8, downsample 0.5 -> 4
}
# The token that opens each image of a turn, where the family writes one (others: see `count_images`).
IMAGE_START = {
    "qwen2_vl": "<|vision_start|>",
    "qwen2_5_vl": "<|vision_start|>",
    "qwen3_vl": "<|vision_start|>",
    "idefics3": "<global-img>",  # once per image, split into tiles or not
    "smolvlm": "<global-img>",
    "gemma3": "<start_of_image>",
    "internvl": "<img>",
}


# Image tokens of one image in a multi-image turn, for families without an image-opening marker (the tiny
# tokenizers drop the newline of LLaVA-style `<image>\n`, so their images' runs touch): 6 x 6 patches, plus one
# newline feature per image on LLaVA-OneVision.
TOKENS_PER_IMAGE = {"llava": 36, "paligemma": 36, "llava_onevision": 37}


def count_images(family: str, model, proc, batch, images=None) -> int:
    """How many images the one prompt in `batch` carries, read from its tokens.

    Families with an image-opening marker: the markers. The others: their pixels where the forward got them (the
    anchoring pass; `generate` encodes pixels before its loop, so the answer prefill sees none), else the image
    token count: whole images of `TOKENS_PER_IMAGE`, or for LLaVA-NeXT (anyres, size-dependent counts) the sum
    over the single-image prompts of the `images` sent.
    """
    ids = batch["input_ids"][0]
    if family in IMAGE_START:
        return int((ids == proc.tokenizer.convert_tokens_to_ids(IMAGE_START[family])).sum())
    for key in ("image_sizes", "pixel_values"):
        if key in batch:
            return int(batch[key].shape[0])
    adapter = get_adapter(model)
    tokens = int(adapter.image_mask(batch["input_ids"], dict(batch)).sum())
    if family == "llava_next":
        singles = [build_inputs(proc, [im], ["x"]) for im in images]
        assert tokens == sum(int(adapter.image_mask(b["input_ids"], dict(b)).sum()) for b in singles)
        return len(images)
    assert tokens % TOKENS_PER_IMAGE[family] == 0
    return tokens // TOKENS_PER_IMAGE[family]


def prefill_inputs(model):
    """Record the inputs of every forward that starts from an empty cache (anchoring passes, answer prefill)."""
    seen: list[dict] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if ids is not None and (cache is None or cache.get_seq_length() == 0):
            seen.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def assert_box_inside(box, size) -> None:
    left, top, right, bottom = box
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_anchor_captures_one_layer_on_the_whole_image_grid(load, family, image):
    model, proc = load(family)
    adapter = get_adapter(model)
    batch = build_inputs(proc, [image], [QUESTION])
    anchor = capture_anchor_map(model, batch)
    assert anchor.layer == adapter.anchor_layer(len(adapter.decoder_layers()))
    assert anchor.captured_layers == (anchor.layer,)
    assert tuple(anchor.attention.shape) == tuple(anchor.raw.shape) == EXPECTED_GRID[family]
    assert abs(float(anchor.attention.sum()) - 1.0) < 1e-5 and bool((anchor.attention >= 0).all())
    assert 0.0 < float(anchor.raw.sum()) <= 1.0 + 1e-6  # a share of the last row's attention
    assert adapter.focal_side() > 0


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES if f != "llava_next"])
def test_grid_of_each_image_in_a_four_image_turn(load, family):
    """Image i's grid sits on image i's whole-image view, checked against the family's marker tokens."""
    model, proc = load(family)
    adapter = get_adapter(model)
    pictures = [make_image(i, size) for i, size in enumerate([(90, 70), (30, 30), (100, 50), (60, 60)])]
    batch = build_inputs(proc, pictures, [QUESTION], images_per_prompt=4)
    ids = batch["input_ids"][0]
    positions = torch.nonzero(adapter.image_mask(batch["input_ids"], dict(batch))[0]).flatten()
    grids = [adapter.image_grid(batch, i) for i in range(4)]
    first = [int(positions[g.start]) for g in grids]  # input position of each grid's first token
    last = [int(positions[g.start + g.cells - 1]) for g in grids]
    assert first == sorted(first) and len(set(first)) == 4
    assert all(last[i] - first[i] == grids[i].cells - 1 for i in range(4))  # each grid is contiguous
    if family in IMAGE_START and family != "internvl":  # the grid follows the image's opening marker
        marker = proc.tokenizer.convert_tokens_to_ids(IMAGE_START[family])
        assert first == [int(p) + 1 for p in torch.nonzero(ids == marker).flatten()]
    elif family == "internvl":  # the thumbnail ends the image's run, just before `</img>`
        end = proc.tokenizer.convert_tokens_to_ids("</img>")
        assert last == [int(p) - 1 for p in torch.nonzero(ids == end).flatten()]
    else:  # images back to back: image i starts after i images' tokens
        per_image = TOKENS_PER_IMAGE[family]
        assert [g.start for g in grids] == [i * per_image for i in range(4)]
    with pytest.raises(ValueError, match="out of range"):
        adapter.image_grid(batch, 4)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_funnel_answer_turn_carries_four_images(load, family):
    model, proc = load(family)
    picture = make_image(3, (90, 70))
    seen, hook = prefill_inputs(model)
    try:
        result = vlm_attn.generate(model, proc, picture, QUESTION, methods=[vlm_attn.FunnelConfig()], vqa=True,
                                   max_new_tokens=1)
    finally:
        hook.remove()
    assert result.image_names == ["original", "focal", "alpha1", "alpha2"] and len(result.images) == 4
    counts = [count_images(family, model, proc, s, result.images) for s in seen]
    assert counts == [1, 4]  # the anchoring pass, then the answer
    assert result.image_tokens == int(get_adapter(model).image_mask(seen[1]["input_ids"], seen[1]).sum())
    single = get_adapter(model).image_grid(build_inputs(proc, [picture], ["x"]))
    assert tuple(result.attention.shape) == single.shape
    assert 0.0 <= result.entropy <= 1.0 and len(result.boxes) == 3
    for box in result.boxes:
        assert_box_inside(box, picture.size)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_vicrop_sends_original_and_one_crop(load, family, image):
    model, proc = load(family)
    seen, hook = prefill_inputs(model)
    try:
        result = vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.ViCropConfig()],
                                   max_new_tokens=1)
    finally:
        hook.remove()
    assert result.image_names == ["original", "crop"] and len(result.boxes) == 1
    counts = [count_images(family, model, proc, s, result.images) for s in seen]
    assert counts == [1, 1, 2]  # question map, general map, answer
    assert tuple(result.decision.relative.shape) == EXPECTED_GRID[family]
    assert_box_inside(result.boxes[0], image.size)


@pytest.mark.parametrize("family", ["gemma3", "paligemma"])
def test_turn_size_limits_give_the_right_fallback(load, family, image, monkeypatch):
    """A family limited to 3 images runs the crops-only fallback; one limited to 1 gets an error naming no
    fallback (every input-level variant needs two images or more)."""
    model, proc = load(family)
    adapter_class = type(get_adapter(model))
    monkeypatch.setattr(adapter_class, "max_images_per_turn", 3)
    with pytest.raises(ValueError, match="fallback='crops_only'"):
        vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig()])
    seen, hook = prefill_inputs(model)
    try:
        result = vlm_attn.generate(model, proc, image, QUESTION,
                                   methods=[vlm_attn.FunnelConfig(fallback="crops_only")], max_new_tokens=1)
    finally:
        hook.remove()
    assert result.image_names == ["focal", "alpha1", "alpha2"]
    assert count_images(family, model, proc, seen[-1], result.images) == 3
    monkeypatch.setattr(adapter_class, "max_images_per_turn", 1)
    for fallback in ("error", "crops_only", "vicrop"):
        with pytest.raises(ValueError, match="cannot run on it") as info:
            vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.FunnelConfig(fallback=fallback)])
        assert "fallback=" not in str(info.value)
    with pytest.raises(ValueError, match="at most 1 image"):
        vlm_attn.generate(model, proc, image, QUESTION, methods=[vlm_attn.ViCropConfig()])
