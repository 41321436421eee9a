"""ViCrop rel-att math on hand-computed maps (SPEC section 5, baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_attn.methods.vicrop import (
    DEFAULT_RATIOS,
    GENERAL_PROMPT,
    ViCropConfig,
    build_attention_prompts,
    relative_map,
    vicrop_images,
    window_search,
)


def test_config_defaults_and_validation() -> None:
    cfg = ViCropConfig()
    assert cfg.ratios == (1.0, 1.2, 1.4, 1.6, 1.8, 2.0) == DEFAULT_RATIOS
    assert cfg.general_prompt == GENERAL_PROMPT == "Write a general description of the image."
    assert cfg.layer is None and cfg.bbox_size is None
    assert ViCropConfig(ratios=[1, 2]).ratios == (1.0, 2.0)
    for kwargs, field in [
        ({"layer": -1}, "layer"),
        ({"bbox_size": 0}, "bbox_size"),
        ({"ratios": ()}, "ratios"),
        ({"ratios": (1.0, -2.0)}, "ratios"),
        ({"general_prompt": " "}, "general_prompt"),
        ({"eps": -1e-3}, "eps"),
    ]:
        with pytest.raises(ValueError, match=field):
            ViCropConfig(**kwargs)


def test_relative_map() -> None:
    q = torch.tensor([[0.2, 0.1], [0.0, 0.4]])
    g = np.array([[0.1, 0.1], [0.5, 0.2]])
    out = relative_map(q, g, eps=0.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[2.0, 1.0], [0.0, 2.0]]))
    # A zero in the general map stays finite with eps; 0/0 without eps becomes 0.
    assert torch.isfinite(relative_map(q, torch.zeros(2, 2))).all()
    assert relative_map(torch.zeros(2, 2), torch.zeros(2, 2), eps=0.0).sum() == 0
    with pytest.raises(ValueError, match="shape"):
        relative_map(torch.ones(2, 2), torch.ones(2, 3))


def test_window_search_small_ratio_wins() -> None:
    # 4x4 map on 400x400 (100 px cells), bbox 100: r=1 is a 1x1 window, r=2 a 2x2 window.
    m = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 9.0, 1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    # r=1: peak 9 at (x1, y1), neighbours 0, 1, 0, 1 -> (9 - 0.5) / 1 = 8.5.
    # r=2: peak 12 at (x1, y1), neighbours 10, 2, 10, 2 -> (12 - 6) / 4 = 1.5.
    assert window_search(m, (400, 400), 100, (1.0, 2.0)) == (100, 100, 200, 200)


def test_window_search_larger_ratio_wins() -> None:
    # 6x6 map on 600x600: a 2x2 block of ones at rows/cols 2-3, plus 0.5 left of it at (row 2, col 1).
    m = np.zeros((6, 6))
    m[2:4, 2:4] = 1.0
    m[2, 1] = 0.5
    # r=1: first peak (x2, y2), neighbours 0.5, 1, 0, 1 -> 1 - 0.625 = 0.375.
    # r=2: peak 4 at (x2, y2), neighbours 2.5, 2, 2, 2 -> (4 - 2.125) / 4 = 0.46875: r=2 wins.
    # Window centre (2 + 1) * 100 = 300 on both axes; crop side 200.
    assert window_search(m, (600, 600), 100, (1.0, 2.0)) == (200, 200, 400, 400)
    # With r=1 alone the box is the first peak cell.
    assert window_search(m, (600, 600), 100, (1.0,)) == (200, 200, 300, 300)


def test_window_search_tie_takes_smallest_x_then_y() -> None:
    m = np.zeros((4, 4))
    m[2, 1] = m[1, 2] = 1.0  # equal peaks at (x1, y2) and (x2, y1)
    assert window_search(m, (400, 400), 100, (1.0,)) == (100, 200, 200, 300)


def test_window_search_whole_map_and_edge_shift() -> None:
    m = torch.rand(2, 2)
    # bbox 300 on a 2x2 grid of 100 px cells: every window covers the map -> whole image.
    assert window_search(m, (200, 200), 300) == (0, 0, 200, 200)
    # Peak in the corner, r=1.4: a 2x2-cell window (2.8 floors to 2) centred at (100, 100); the 280 px crop
    # would start at -40 and is shifted inside the image.
    corner = np.zeros((4, 4))
    corner[0, 0] = 1.0
    assert window_search(corner, (400, 400), 200, (1.4,)) == (0, 0, 280, 280)


def test_window_search_non_square_image_and_axis_clip() -> None:
    # 2x4 grid on 400x100: cells 100 x 50 px. bbox 100: window 1 x 2 cells (covers the height only).
    m = np.array([[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    # Window sums along x: [0, 0, 4, 0]; peak at x=2, centre (250, 50); crop 100 wide, 100 tall (= H).
    assert window_search(m, (400, 100), 100, (1.0,)) == (200, 0, 300, 100)
    # r=1.4: side 140 px -> 1 cell in x, still the whole height; height clipped to 100 per axis.
    assert window_search(m, (400, 100), 100, (1.4,)) == (180, 0, 320, 100)


def test_window_search_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bbox_size"):
        window_search(np.ones((2, 2)), (10, 10), 0)
    with pytest.raises(ValueError, match="ratios"):
        window_search(np.ones((2, 2)), (10, 10), 4, ())


def test_prompts_and_images() -> None:
    q, g = build_attention_prompts("What is written? ", vqa=True)
    assert q == "What is written? Answer the question using a single word or phrase."
    assert g == "Write a general description of the image. Answer the question using a single word or phrase."
    assert build_attention_prompts("Q?", vqa=False) == ("Q?", GENERAL_PROMPT)
    ims = vicrop_images(Image.new("LA", (50, 40)), (10, 5, 30, 25))
    assert [im.size for im in ims] == [(50, 40), (20, 20)] and all(im.mode == "RGB" for im in ims)
    with pytest.raises(ValueError, match="inside"):
        vicrop_images(Image.new("RGB", (50, 40)), (10, 5, 60, 25))
