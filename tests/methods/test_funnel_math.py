"""Visual Funnel math on hand-computed maps (SPEC section 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_attn.methods.crops import cells_in_box, fit_box, to_rgb, weighted_centroid, with_vqa_suffix
from vlm_attn.methods.funnel import (
    ANCHOR_PROMPT,
    FunnelConfig,
    build_anchor_prompt,
    build_answer_prompt,
    crop_portfolio,
    default_anchor_layer,
    fallback_images,
    funnel_portfolio,
    normalize_map,
    normalized_entropy,
    portfolio_scales,
)

# ---------------------------------------------------------------- config


def test_config_defaults() -> None:
    cfg = FunnelConfig()
    assert cfg.anchor_layer is None and cfg.focal_side is None
    assert cfg.anchor_prompt == "To answer '{question}', where in the image should I look?"
    assert cfg.vqa_suffix == " Answer the question using a single word or phrase."
    assert cfg.entropy_eps == 1e-12
    assert cfg.fallback == "error"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"anchor_layer": -1}, "anchor_layer"),
        ({"anchor_layer": True}, "anchor_layer"),
        ({"anchor_layer": 3.0}, "anchor_layer"),
        ({"focal_side": 0}, "focal_side"),
        ({"anchor_prompt": "where should I look?"}, "anchor_prompt"),
        ({"anchor_prompt": "{question} {other}"}, "anchor_prompt"),
        ({"entropy_eps": 0.0}, "entropy_eps"),
        ({"entropy_eps": 1.0}, "entropy_eps"),
        ({"fallback": "skip"}, "fallback"),
    ],
)
def test_config_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FunnelConfig(**kwargs)


def test_default_anchor_layer() -> None:
    assert default_anchor_layer(36) == 22  # 21.6 -> 22, the published Qwen2.5-VL-3B layer
    assert default_anchor_layer(32) == 19  # 19.2
    assert default_anchor_layer(1) == 0
    with pytest.raises(ValueError, match="num_layers"):
        default_anchor_layer(0)


# ---------------------------------------------------------------- prompts


def test_prompts() -> None:
    assert build_anchor_prompt(" What brand is the cup? ") == (
        "To answer 'What brand is the cup?', where in the image should I look?"
    )
    assert build_anchor_prompt("Q?", "Look for {question}") == "Look for Q?"
    with pytest.raises(ValueError, match="anchor_prompt"):
        build_anchor_prompt("Q?", "no field")
    assert build_answer_prompt("What colour?", vqa=True) == (
        "What colour? Answer the question using a single word or phrase."
    )
    assert build_answer_prompt("Describe it.", vqa=False) == "Describe it."
    assert with_vqa_suffix("Q?", True, " Short.") == "Q? Short."
    assert ANCHOR_PROMPT.count("{question}") == 1


# ---------------------------------------------------------------- normalize_map / entropy / scales


def test_normalize_map_clips_and_normalises() -> None:
    out = normalize_map(torch.tensor([1.0, -1.0, 3.0, 0.0]), (2, 2))
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor([[0.25, 0.0], [0.75, 0.0]]))


@pytest.mark.parametrize("row", [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, 0.0, -0.5, -3.0, -1.0]])
def test_normalize_map_uniform_when_nothing_positive(row: list[float]) -> None:
    out = normalize_map(np.array(row), (2, 3))
    assert torch.allclose(out, torch.full((2, 3), 1 / 6))


def test_normalize_map_layout_and_errors() -> None:
    out = normalize_map(torch.arange(6, dtype=torch.bfloat16).reshape(1, 6), (2, 3))
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]) / 15)  # row-major token order
    with pytest.raises(ValueError, match="needs 6"):
        normalize_map(torch.ones(5), (2, 3))
    with pytest.raises(ValueError, match="NaN"):
        normalize_map(torch.tensor([1.0, float("nan"), 0.0, 0.0]), (2, 2))


def test_entropy_uniform_and_one_hot() -> None:
    uniform = torch.full((4, 4), 1 / 16)
    h = normalized_entropy(uniform)
    assert h == pytest.approx(1.0, abs=1e-9)
    a1, a2 = portfolio_scales(h)
    assert a1 == pytest.approx(1.8, abs=1e-9) and a2 == pytest.approx(2.8, abs=1e-9)

    one_hot = torch.zeros(4, 4)
    one_hot[2, 1] = 1.0
    assert normalized_entropy(one_hot) == 0.0
    assert portfolio_scales(0.0) == (1.2, 1.6)


def test_entropy_hand_values() -> None:
    # Two equal cells out of four: H = log 2 / log 4 = 0.5.
    assert normalized_entropy(torch.tensor([[0.5, 0.0], [0.0, 0.5]])) == pytest.approx(0.5, abs=1e-9)
    # Unnormalised input is renormalised first; an all-zero map counts as uniform; one cell gives 0.
    assert normalized_entropy(torch.tensor([[2.0, 0.0], [0.0, 2.0]])) == pytest.approx(0.5, abs=1e-9)
    assert normalized_entropy(torch.zeros(3, 3)) == pytest.approx(1.0, abs=1e-9)
    assert normalized_entropy(torch.tensor([[0.7]])) == 0.0
    # Scales clip H to [0, 1].
    assert portfolio_scales(0.5) == pytest.approx((1.5, 2.2))
    assert portfolio_scales(2.0) == pytest.approx((1.8, 2.8))
    assert portfolio_scales(-1.0) == pytest.approx((1.2, 1.6))


# ---------------------------------------------------------------- crop helpers


def test_weighted_centroid_hand_map() -> None:
    # 2x2 grid on 200x100: cell centres x in {50, 150}, y in {25, 75}.
    a = torch.tensor([[0.25, 0.25], [0.0, 0.5]], dtype=torch.float64)
    assert weighted_centroid(a, (200, 100)) == pytest.approx((125.0, 50.0))
    top_row = torch.tensor([[True, True], [False, False]])
    assert weighted_centroid(a, (200, 100), top_row) == pytest.approx((100.0, 25.0))
    assert weighted_centroid(a, (200, 100), torch.tensor([[False, False], [True, False]])) is None


def test_cells_in_box_closed_edges() -> None:
    # 1x4 grid on 400x100: centres x = 50, 150, 250, 350, y = 50.
    mask = cells_in_box((1, 4), (400, 100), (150, 0, 250, 100))
    assert mask.tolist() == [[False, True, True, False]]


def test_fit_box_shifts_inside() -> None:
    assert fit_box((75.0, 25.0), 64, 64, (100, 100)) == (36, 0, 100, 64)
    assert fit_box((10.0, 90.0), 30, 20, (100, 100)) == (0, 80, 30, 100)
    assert fit_box((50.0, 50.0), 31, 31, (100, 100)) == (35, 35, 66, 66)  # 34.5 rounds half up
    with pytest.raises(ValueError, match="box size"):
        fit_box((50.0, 50.0), 101, 10, (100, 100))


# ---------------------------------------------------------------- portfolio


def test_portfolio_one_hot_shift_inside() -> None:
    # 2x2 grid on 100x100, all mass on cell (0, 1) whose centre is (75, 25).
    a = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    p = funnel_portfolio(a, (100, 100), focal_side=40)
    assert p.entropy == 0.0 and (p.alpha1, p.alpha2) == (1.2, 1.6)
    assert p.centers == ((75.0, 25.0), (75.0, 25.0), (75.0, 25.0))
    assert p.boxes == (
        (55, 5, 95, 45),  # side 40, fits
        (51, 1, 99, 49),  # side 48, fits
        (36, 0, 100, 64),  # side 64: (43, -7) shifted down and left
    )
    assert p.sides == (40, 48, 64)


def test_portfolio_uniform() -> None:
    # 4x4 grid on 400x400: centres 50..350. S = 120 keeps every centre off the box edges.
    p = funnel_portfolio(torch.full((4, 4), 1 / 16), (400, 400), focal_side=120)
    assert p.entropy == pytest.approx(1.0, abs=1e-9)
    assert p.alpha1 == pytest.approx(1.8) and p.alpha2 == pytest.approx(2.8)
    assert p.centers == ((200.0, 200.0), (200.0, 200.0), (200.0, 200.0))
    assert p.boxes == ((140, 140, 260, 260), (92, 92, 308, 308), (32, 32, 368, 368))


def test_portfolio_two_peaks_restricted_centroid() -> None:
    # 1x10 grid on 1000x1000: cell centres x = 50..950, y = 500. Peaks 0.6 at x=250, 0.4 at x=750.
    a = torch.zeros(1, 10)
    a[0, 2], a[0, 7] = 0.6, 0.4
    p = funnel_portfolio(a, (1000, 1000), focal_side=420)
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(10)  # 0.29229...
    assert p.entropy == pytest.approx(h)
    assert p.alpha1 == pytest.approx(1.2 + 0.6 * h) and p.alpha2 == pytest.approx(1.6 + 1.2 * h)
    mu0, mu1, mu2 = p.centers
    assert mu0 == pytest.approx((450.0, 500.0))  # between the peaks
    # Focal box (240, 290, 660, 710) holds only the 0.6 peak: mu1 jumps onto it.
    assert p.boxes[0] == (240, 290, 660, 710)
    assert mu1 == pytest.approx((250.0, 500.0))
    # alpha1 * 420 = 577.66 -> 578, centred at x=250 -> left -39, shifted to 0.
    assert p.boxes[1] == (0, 211, 578, 789)
    assert mu2 == pytest.approx((250.0, 500.0))
    # alpha2 * 420 = 819.31 -> 819; top = floor(500 - 409.5 + 0.5) = 91.
    assert p.boxes[2] == (0, 91, 819, 910)


def test_portfolio_empty_region_falls_back_to_box_centre_and_caps() -> None:
    # 2x8 grid on 800x200 (100 px cells). Equal peaks at cells (0, 1) -> (150, 50) and (1, 6) -> (650, 150).
    a = torch.zeros(2, 8)
    a[0, 1], a[1, 6] = 0.5, 0.5
    p = funnel_portfolio(a, (800, 200), focal_side=120)
    assert p.entropy == pytest.approx(0.25)  # log 2 / log 16
    assert p.centers[0] == pytest.approx((400.0, 100.0))
    # The focal box (340, 40, 460, 160) and the alpha1 box hold no mass: their own centres are used.
    assert p.boxes[0] == (340, 40, 460, 160)
    assert p.centers[1] == (400.0, 100.0)
    assert p.boxes[1] == (319, 19, 481, 181)  # 1.35 * 120 = 162
    assert p.centers[2] == (400.0, 100.0)
    # 1.9 * 120 = 228 > 200: capped at the shorter image side, still square.
    assert p.boxes[2] == (300, 0, 500, 200)


def test_portfolio_image_smaller_than_focal_side() -> None:
    # 3x5 grid on 100x60, one-hot at cell (1, 4) -> centre (90, 30). S = 224 > both sides.
    a = torch.zeros(3, 5)
    a[1, 4] = 1.0
    p = funnel_portfolio(a, (100, 60), focal_side=224)
    assert p.boxes == ((40, 0, 100, 60),) * 3
    crops = crop_portfolio(Image.new("RGB", (100, 60)), p)
    assert [c.size for c in crops] == [(100, 60), (60, 60), (60, 60), (60, 60)]


def test_portfolio_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="focal_side"):
        funnel_portfolio(torch.ones(2, 2), (10, 10), focal_side=0)
    with pytest.raises(ValueError, match="image_size"):
        funnel_portfolio(torch.ones(2, 2), (0, 10), focal_side=4)
    with pytest.raises(ValueError, match="2-D"):
        funnel_portfolio(torch.ones(4), (10, 10), focal_side=4)


# ---------------------------------------------------------------- crops


def _gradient_image(mode: str, size: tuple[int, int] = (100, 100)) -> Image.Image:
    """R grows with x, G with y: every crop has distinct, checkable pixels."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    rgb = np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def test_crop_portfolio_order_and_pixels() -> None:
    image = _gradient_image("RGB")
    p = funnel_portfolio(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), (100, 100), focal_side=40)
    original, focal, a1, a2 = crop_portfolio(image, p)
    assert original.size == (100, 100) and focal.size == (40, 40) and a1.size == (48, 48) and a2.size == (64, 64)
    assert np.array_equal(np.asarray(focal), np.asarray(image)[5:45, 55:95])
    resized = crop_portfolio(image, p, resize=32)
    assert resized[0].size == (100, 100) and all(c.size == (32, 32) for c in resized[1:])
    with pytest.raises(ValueError, match="differs"):
        crop_portfolio(_gradient_image("RGB", (50, 50)), p)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_crop_portfolio_converts_to_rgb(mode: str) -> None:
    p = funnel_portfolio(torch.full((2, 2), 0.25), (100, 100), focal_side=40)
    images = crop_portfolio(_gradient_image(mode), p)
    assert all(im.mode == "RGB" for im in images)


def test_to_rgb_composites_alpha_over_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    rgb = to_rgb(rgba)
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 0)) == (10, 20, 30)


def test_fallback_images() -> None:
    ims = [Image.new("RGB", (s, s)) for s in (10, 4, 5, 6)]
    assert [im.size[0] for im in fallback_images(ims, "crops_only")] == [4, 5, 6]
    assert [im.size[0] for im in fallback_images(ims, "vicrop")] == [10, 4]
    with pytest.raises(ValueError, match="fallback is 'error'"):
        fallback_images(ims, "error")
