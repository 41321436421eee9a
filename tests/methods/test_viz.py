"""Attention drawing: sizes, that something was drawn, PNG output, colour bars, legends, change panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_attn.inspection import Inspection, LayerInspection
from vlm_attn.patches.base import ImageGrid
from vlm_attn.viz import (
    Panel,
    colorbar,
    colormap,
    diverging_colormap,
    draw_attention,
    draw_boxes,
    side_by_side,
)


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


# ------------------------------------------------------------------ colour bars, legends, change panels, boxes
def test_panel_colour_bar_holds_the_gradient_and_its_values() -> None:
    image = _image()
    grid = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    drawn = Panel(image, grid, value_range=(0.0, 2.0)).draw()
    assert drawn.height == image.height and drawn.width > image.width + 10
    arr = np.asarray(drawn).astype(int)
    strip = arr[:, image.width + 4 + 5]  # the middle column of the 10-pixel gradient strip
    assert tuple(strip[0]) == (252, 255, 164) and tuple(strip[-1]) == (0, 0, 4)  # high at the top, low below
    brightness = strip.sum(axis=1)
    assert np.all(np.diff(brightness) <= 0) and len(np.unique(brightness)) > 20  # a smooth ramp, not two blocks
    labels = arr[:, image.width + 4 + 10 :]
    assert (labels.sum(axis=2) < 200).sum() > 10  # dark label text beside the strip
    plain = Panel(image, grid, colorbar=False).draw()
    assert plain.size == image.size


def test_diverging_colour_bar_and_colormap() -> None:
    out = diverging_colormap(np.array([0.0, 0.5, 1.0]))
    assert tuple(out[0]) == (33, 102, 172) and tuple(out[1]) == (247, 247, 247) and tuple(out[2]) == (178, 24, 43)
    bar = np.asarray(colorbar(101, (-0.3, 0.3), "diverging")).astype(int)
    assert tuple(bar[0, 5]) == (178, 24, 43) and tuple(bar[50, 5]) == (247, 247, 247)
    assert tuple(bar[100, 5]) == (33, 102, 172)
    with pytest.raises(ValueError, match="cmap"):
        colorbar(10, (0.0, 1.0), "rainbow")


def test_change_panel_signs_for_a_hand_made_before_after() -> None:
    """After moves attention from cell (1, 1) to cell (0, 0): the change panel is red there, blue here, white else."""
    before = torch.tensor([[0.1, 0.1], [0.1, 0.3]])
    after = torch.tensor([[0.3, 0.1], [0.1, 0.1]])
    look = Inspection(image=_image((100, 100)), prompt="p", grid=ImageGrid(start=0, shape=(2, 2)),
                      layers=(LayerInspection(layer=2, before=before, after=after, before_mass=0.6, after_mass=0.6),),
                      methods=("var",), region=(0.0, 0.0, 100.0, 100.0))
    rows = look.panel_rows(min_width=200)
    assert [len(r) for r in rows] == [3] and rows[0][2].cmap == "diverging"
    assert rows[0][2].value_range == pytest.approx((-0.2, 0.2))
    change = np.asarray(rows[0][2].picture()).astype(int)  # 200 x 200: cells of 100 px
    red, blue, still = change[30, 30], change[170, 170], change[30, 170]
    assert red[0] > red[2] + 80 and blue[2] > blue[0] + 80
    assert abs(int(still[0]) - int(still[2])) < 3 and still.min() > 200  # no change: near white
    figure = look.render(min_width=200)
    assert figure.width > 3 * 200  # before, after, change (and their bars) side by side


def test_coincident_boxes_both_show_and_a_lone_box_is_solid() -> None:
    image = _image()
    box = (10, 10, 70, 60)
    arr = np.asarray(draw_boxes(image, [box, box], line=1)).astype(int)
    top_edge = [tuple(p) for p in arr[10, 10:70]]
    assert (255, 255, 255) in top_edge and (0, 255, 255) in top_edge  # white and cyan dashes alternate
    assert set(top_edge) <= {(255, 255, 255), (0, 255, 255)}
    left_edge = [tuple(p) for p in arr[10:60, 10]]
    assert (255, 255, 255) in left_edge and (0, 255, 255) in left_edge
    lone = np.asarray(draw_boxes(image, [box, (80, 5, 110, 40)], line=1)).astype(int)
    assert {tuple(p) for p in lone[10, 10:70]} == {(255, 255, 255)}  # no shared pixels: solid
    assert {tuple(p) for p in lone[5, 80:110]} == {(0, 255, 255)}
    assert tuple(lone[30, 40]) == (128, 128, 128)  # the inside is untouched


def test_legend_names_boxes_and_marks() -> None:
    image = _image((200, 120))
    panel = Panel(image, torch.ones(3, 3), boxes=[(10, 10, 50, 50), (20, 20, 90, 90)], marks=[(0, 0)],
                  box_labels=("focal", "alpha1"), mark_label="visual sink")
    assert panel.legend_entries() == [("focal", (255, 255, 255)), ("alpha1", (0, 255, 255)),
                                      ("visual sink", (255, 0, 0))]
    drawn = np.asarray(panel.draw()).astype(int)
    band = drawn[image.height :]
    assert band.shape[0] > 8
    colours = {tuple(p) for p in band.reshape(-1, 3)}
    assert {(0, 255, 255), (255, 0, 0), (0, 0, 0)} <= colours  # swatches and their black edges / text


def test_heatmap_covers_the_seen_region_only() -> None:
    """LLaVA's centre crop of a 120 x 80 photo is x 20..100: the heat lies there, the rest is greyed."""
    image = Image.new("RGB", (120, 80), (200, 40, 40))
    grid = torch.zeros(2, 2)
    grid[0, 0] = 1.0
    arr = np.asarray(draw_attention(image, grid, region=(20.0, 0.0, 100.0, 80.0), alpha=1.0)).astype(int)
    assert tuple(arr[40, 5]) == tuple(arr[40, 115]) == (164, 84, 84)  # outside: halfway to grey
    assert tuple(arr[5, 25]) == (252, 255, 164) and tuple(arr[75, 95]) == (0, 0, 4)  # the grid's corners
    padded = draw_attention(image, grid, region=(0.0, -20.0, 120.0, 100.0), alpha=1.0)  # padding: past the image
    assert padded.size == image.size
    marks = np.asarray(draw_attention(image, grid, marks=[(0, 0)], region=(20.0, 0.0, 100.0, 80.0))).astype(int)
    assert tuple(marks[0, 20]) == (255, 0, 0) and tuple(marks[0, 19]) != (255, 0, 0)  # the cell starts at x 20
