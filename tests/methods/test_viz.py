"""Attention drawing: sizes, that something was drawn, PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_attn.viz import colormap, draw_attention, side_by_side


def _image(size: tuple[int, int] = (120, 80), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128)).convert(mode)


def test_colormap_endpoints_and_shape() -> None:
    out = colormap(np.array([[-1.0, 0.0], [1.0, 2.0]]))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == tuple(out[0, 1]) == (0, 0, 4)  # clipped below
    assert tuple(out[1, 0]) == tuple(out[1, 1]) == (252, 255, 164)  # clipped above


def test_draw_attention_size_and_change(tmp_path: Path) -> None:
    image = _image()
    grid = torch.zeros(4, 6)
    grid[1, 4] = 1.0
    out = draw_attention(image, grid, boxes=[(10, 10, 50, 40), (0, 0, 120, 80)], title="anchor", marks=[(0, 0)])
    assert out.size == image.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(image))
    assert np.asarray(image).max() == 128  # input untouched
    # The hottest cell (row 1, col 4 -> x 80..100, y 20..40) is brighter than a cold one.
    arr = np.asarray(out).astype(int)
    assert arr[30, 90].sum() > arr[70, 20].sum()
    # The mark at cell (0, 0) is red at its corner.
    assert tuple(arr[19, 0]) == (255, 0, 0)
    path = tmp_path / "att.png"
    out.save(path)
    assert path.stat().st_size > 0
    with Image.open(path) as reread:
        assert reread.size == image.size


def test_draw_attention_accepts_numpy_and_other_modes() -> None:
    out = draw_attention(_image(mode="RGBA"), np.random.default_rng(0).random((3, 3)))
    assert out.size == (120, 80) and out.mode == "RGB"
    const = draw_attention(_image(mode="L"), np.ones((2, 2)), alpha=0.0)
    assert np.array_equal(np.asarray(const), np.asarray(_image()))  # alpha 0: only the image


def test_draw_attention_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        draw_attention(_image(), torch.ones(2, 2), marks=[(2, 0)])
    with pytest.raises(ValueError, match="alpha"):
        draw_attention(_image(), torch.ones(2, 2), alpha=1.5)
    with pytest.raises(ValueError, match="empty"):
        draw_attention(_image(), torch.ones(2, 2), boxes=[(10, 10, 10, 20)])
    with pytest.raises(ValueError, match="2-D"):
        draw_attention(_image(), torch.ones(4))


def test_side_by_side(tmp_path: Path) -> None:
    a, b = _image((50, 40)), _image((30, 60))
    plain = side_by_side([a, b], gap=4)
    assert plain.size == (84, 60)
    titled = side_by_side([a, b], ["original", "focal"], gap=4)
    assert titled.width == 84 and titled.height > 60
    titled.save(tmp_path / "row.png")
    assert (tmp_path / "row.png").stat().st_size > 0
    with pytest.raises(ValueError, match="titles"):
        side_by_side([a, b], ["one"])
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])
