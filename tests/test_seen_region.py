"""Crop geometry follows what the model saw (issue 11 §2): `FamilyAdapter.seen_region` on every family.

Random-weight models do not attend to bright patches, so the geometry is checked through the processor's real
pixel output instead of the model's attention: a bright patch is planted at a known place of a non-square photo,
the processor runs, the grid cell the patch landed in is read from `pixel_values` (in that family's layout), and a
one-hot map on that cell must put the cell centre, the Funnel's focal box and ViCrop's crop back on the planted
place in original-image pixels, within one grid cell.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vlm_attn
from vlm_attn.methods.crops import cell_centers, cell_size
from vlm_attn.methods.funnel import funnel_portfolio
from vlm_attn.methods.vicrop import window_search
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .test_funnel_families import ALL_FAMILIES

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# Where each family's grid picture sits in `pixel_values` (batch of one prompt, one image).
VIEW = {
    "llava": lambda pv: pv[0],  # (1, 3, H, W): the centre crop
    "gemma3": lambda pv: pv[0],
    "paligemma": lambda pv: pv[0],
    "llava_next": lambda pv: pv[0, 0],  # (1, 1 + tiles, 3, H, W): the base view leads
    "llava_onevision": lambda pv: pv[0, 0],
    "idefics3": lambda pv: pv[0, -1],  # (1, tiles + 1, 3, H, W): the global view ends the image
    "smolvlm": lambda pv: pv[0, -1],
    "internvl": lambda pv: pv[-1],  # (tiles + 1, 3, H, W): the thumbnail is the last tile
}
# Planted places (x, y) in original pixels, inside what every tiny processor shows (LLaVA keeps x 20..100 of a
# 120 x 80 photo, y 20..100 of an 80 x 120 one) and away from the centre, where a wrong geometry would show.
PLACES = {(120, 80): [(33, 57), (88, 22)], (80, 120): [(57, 33), (22, 88)]}
PATCH = 6  # side of the bright square in original pixels


def planted(size: tuple[int, int], place: tuple[int, int]) -> Image.Image:
    """A black photo of `size` with a white PATCH x PATCH square centred on `place`."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x, y = place
    arr[y - PATCH // 2 : y + PATCH // 2, x - PATCH // 2 : x + PATCH // 2] = 255
    return Image.fromarray(arr)


def landed_cell(family: str, inputs, grid: tuple[int, int], merge: int | None = None) -> tuple[int, int]:
    """(row, col) of the grid cell the bright patch landed in, read from the processor's pixel values."""
    pv = inputs["pixel_values"].float()
    gh, gw = grid
    if family in QWEN:
        # Rows are patches in merge-block order: row // merge^2 is the LM token, raster over the merged grid.
        token = int(pv.mean(dim=1).argmax()) // (merge * merge)
        return divmod(token, gw)
    view = VIEW[family](pv).mean(dim=0)  # (H, W) brightness of the grid's picture
    bright = view >= view.min() + 0.5 * (view.max() - view.min())
    ys, xs = torch.nonzero(bright, as_tuple=True)
    vy, vx = float(ys.float().mean()) + 0.5, float(xs.float().mean()) + 0.5
    return min(int(vy * gh / view.shape[0]), gh - 1), min(int(vx * gw / view.shape[1]), gw - 1)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_planted_patch_maps_back_to_its_place(load, family):
    model, proc = load(family)
    adapter = get_adapter(model)
    merge = getattr(proc.image_processor, "merge_size", None)
    for size, places in PLACES.items():
        for place in places:
            image = planted(size, place)
            inputs = build_inputs(proc, [image], ["where is the patch?"])
            grid = adapter.image_grid(inputs).shape
            region = adapter.seen_region(proc, size, inputs)
            row, col = landed_cell(family, inputs, grid, merge)
            cw, ch = cell_size(grid, size, region)
            xs, ys = cell_centers(grid, size, region)
            where = f"{family} {size} planted at {place}: cell ({row}, {col}) of {grid} over {region}"
            assert abs(float(xs[col]) - place[0]) <= cw and abs(float(ys[row]) - place[1]) <= ch, where
            one_hot = torch.zeros(grid)
            one_hot[row, col] = 1.0
            focal = funnel_portfolio(one_hot, size, focal_side=8, region=region).boxes[0]
            crop = window_search(one_hot, size, bbox_size=1, ratios=(1.0,), region=region)
            for box in (focal, crop):
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                assert abs(cx - place[0]) <= cw and abs(cy - place[1]) <= ch, f"{where}: box {box}"


@pytest.mark.parametrize("size, region", [((120, 80), (20.0, 0.0, 100.0, 80.0)), ((80, 120), (0.0, 20.0, 80.0, 100.0)),
                                          ((48, 48), (0.0, 0.0, 48.0, 48.0))])
def test_llava_centre_crop_by_hand(load, size, region):
    """Tiny LLaVA: shortest edge 80 -> 48, long edge 120 -> 72, crop (72 - 48) // 2 = 12 view px = 20 px."""
    model, proc = load("llava")
    assert get_adapter(model).seen_region(proc, size) == region


def test_real_llava_processor_sees_x_80_to_560(load, shared_dir):
    """The released LLaVA-1.5 processor (336 px) on a 640 x 480 photo: 448 x 336, crop 56 view px = 80 px a side."""
    from transformers import AutoProcessor

    model, _ = load("llava")
    real = AutoProcessor.from_pretrained(shared_dir / "real_configs" / "llava-hf__llava-1.5-7b-hf")
    adapter = get_adapter(model)
    assert adapter.seen_region(real, (640, 480)) == (80.0, 0.0, 560.0, 480.0)
    assert adapter.seen_region(real, (480, 640)) == (0.0, 80.0, 480.0, 560.0)
    # A 1000 x 300 panorama: 336 / 300 -> 1120 x 336, crop at 392 view px = 350 px: x 350..650 only.
    assert adapter.seen_region(real, (1000, 300)) == pytest.approx((350.0, 0.0, 650.0, 300.0))


def test_llava_pad_to_square_reaches_past_the_image(load):
    """With do_pad the 120 x 80 photo is padded to 120 x 120 (20 px above and below), then resized whole."""
    model, proc = load("llava")
    proc.image_processor.do_pad = True
    assert get_adapter(model).seen_region(proc, (120, 80)) == pytest.approx((0.0, -20.0, 120.0, 100.0))


def test_onevision_several_images_are_padded(load):
    """LLaVA-OneVision pads each image of a multi-image prompt to a square: its grid reaches past the short sides."""
    model, proc = load("llava_onevision")
    images = [planted((120, 80), (33, 57)), planted((120, 80), (88, 22))]
    inputs = build_inputs(proc, images, ["x"], images_per_prompt=2)
    adapter = get_adapter(model)
    assert adapter.seen_region(proc, (120, 80), inputs, image_index=1) == pytest.approx((0.0, -20.0, 120.0, 100.0))
    single = build_inputs(proc, images[:1], ["x"])
    assert adapter.seen_region(proc, (120, 80), single) == (0.0, 0.0, 120.0, 80.0)
    # The padded view: the patch of image 1 lands where the padded geometry says.
    pv = inputs["pixel_values"][1, 0].float().mean(dim=0)
    ys, xs = torch.nonzero(pv >= pv.min() + 0.5 * (pv.max() - pv.min()), as_tuple=True)
    side = 120 / pv.shape[1]  # original pixels per view pixel
    x, y = float(xs.float().mean() + 0.5) * side, float(ys.float().mean() + 0.5) * side - 20  # 20 px of padding on top
    assert abs(x - 88) < 2 and abs(y - 22) < 2


def test_funnel_and_vicrop_decide_use_the_seen_region(load, monkeypatch):
    """End to end on LLaVA: a captured one-hot map on cell (2, 0) puts the boxes at x = 20 + 80/12, not 120/12."""
    from vlm_attn import generation
    from vlm_attn.passes.anchor import AnchorMap

    model, proc = load("llava")
    grid = get_adapter(model).image_grid(build_inputs(proc, [planted((120, 80), (33, 57))], ["x"]))

    def fake_capture(model, inputs, layer=None, image_index=0, stop_early=True):
        raw = torch.zeros(grid.shape)
        raw[2, 0] = 1.0
        return AnchorMap(attention=raw, raw=raw, layer=layer, grid=grid, captured_layers=(layer,), steered=False)

    monkeypatch.setattr(generation, "capture_anchor_map", fake_capture)
    image = planted((120, 80), (33, 57))
    decision = generation.funnel_decide(model, proc, image, "where?", vlm_attn.FunnelConfig(focal_side=10))
    assert decision.region == (20.0, 0.0, 100.0, 80.0)
    mu0 = decision.portfolio.centers[0]
    assert mu0 == pytest.approx((20 + 80 / 12, 2.5 * 80 / 6))  # the whole-image geometry would give (10, 33.3)
    assert decision.boxes[0] == (22, 28, 32, 38)
    result = generation.GenerationResult(text="", method="funnel", decision=decision, images=[], image_names=[],
                                         image_tokens=0)
    assert result.to_dict()["region"] == [20.0, 0.0, 100.0, 80.0]
    # ViCrop: question map one-hot, general map uniform (the captured raw map is divided by itself: 1 on the peak).
    vicrop = generation.vicrop_decide(model, proc, image, "where?", vlm_attn.ViCropConfig(bbox_size=1, ratios=(1.0,)))
    assert vicrop.region == (20.0, 0.0, 100.0, 80.0)
    left, top, right, bottom = vicrop.box
    assert (left + right) / 2 == pytest.approx(20 + 80 / 12, abs=1) and (top + bottom) / 2 == pytest.approx(33.3, abs=1)


def test_region_validation():
    with pytest.raises(ValueError, match="region must be"):
        funnel_portfolio(torch.ones(2, 2), (10, 10), 4, region=(5.0, 0.0, 5.0, 10.0))
    with pytest.raises(ValueError, match="region must be"):
        window_search(torch.ones(2, 2), (10, 10), 4, region=(0.0, 0.0, float("nan"), 10.0))
