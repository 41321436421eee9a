"""Pictures of attention maps for reports and debugging: heatmap overlays, boxes, marked tokens.

Only Pillow and numpy are used (no matplotlib): the colormap is a five-stop piecewise-linear approximation of
"inferno" (dark purple -> red -> yellow), which stays readable in greyscale print and for colour-blind readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_attn.methods.crops import MapLike, as_grid, to_rgb

# (position in [0, 1], RGB) stops of the colormap.
_COLORMAP_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.50, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.00, (252, 255, 164)),
)
# Outline colours for successive boxes (e.g. the Funnel's focal, alpha1, alpha2 boxes).
_BOX_COLORS: tuple[tuple[int, int, int], ...] = ((255, 255, 255), (0, 255, 255), (0, 255, 0), (255, 0, 255))
_MARK_COLOR = (255, 0, 0)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` (any shape) to uint8 RGB, shape ``values.shape + (3,)``; values are clipped."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    stops = np.array([s for s, _ in _COLORMAP_STOPS])
    colors = np.array([c for _, c in _COLORMAP_STOPS], dtype=np.float64)
    channels = [np.interp(values, stops, colors[:, k]) for k in range(3)]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def _upsample(
    grid: np.ndarray, size: tuple[int, int], value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Scale a ``(gh, gw)`` map to ``[0, 1]`` and resize it bilinearly to ``size = (W, H)``.

    The scale is the map's own min-max, or ``value_range = (low, high)`` when given (values outside are clipped),
    so that several maps drawn with one range share a colour scale.
    """
    if value_range is None:
        low, high = float(grid.min()), float(grid.max())
    else:
        low, high = float(value_range[0]), float(value_range[1])
    scaled = np.clip((grid - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(grid)
    resized = Image.fromarray(scaled.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def _line_width(size: tuple[int, int]) -> int:
    return max(1, round(min(size) / 150))


def draw_attention(
    image: Image.Image,
    grid_map: MapLike,
    boxes: Sequence[Sequence[float]] | None = None,
    title: str | None = None,
    marks: Sequence[tuple[int, int]] | None = None,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
) -> Image.Image:
    """Overlay an attention grid on ``image`` as a heatmap, with optional boxes, marked cells and a title.

    Args:
        image: the original image (any mode; converted to RGB, alpha over white).
        grid_map: ``(gh, gw)`` attention map over the image-token grid; min-max scaled for display, so only its
            shape matters, not its sum.
        boxes: ``(left, top, right, bottom)`` pixel boxes (right/bottom exclusive), outlined in white, cyan,
            green, magenta, then cycling.
        title: text drawn in a dark strip over the top-left corner.
        marks: ``(row, col)`` grid cells outlined in red and crossed, e.g. the visual sink tokens.
        alpha: heatmap opacity in ``[0, 1]``.
        value_range: ``(low, high)`` mapped to the ends of the colormap instead of the map's own min-max; give
            several maps the same range to compare them (e.g. attention before and after a method).

    Returns:
        A new RGB image of the same size as ``image``; the input is left untouched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    base = to_rgb(image)
    grid = as_grid(grid_map).numpy()
    gh, gw = grid.shape
    width, height = base.size

    heat = colormap(_upsample(grid, base.size, value_range)).astype(np.float64)
    blended = (1.0 - alpha) * np.asarray(base, dtype=np.float64) + alpha * heat
    out = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    line = _line_width(base.size)

    for k, box in enumerate(boxes or ()):
        left, top, right, bottom = (round(float(v)) for v in box)
        if right <= left or bottom <= top:
            raise ValueError(f"box {tuple(box)} is empty")
        draw.rectangle((left, top, right - 1, bottom - 1), outline=_BOX_COLORS[k % len(_BOX_COLORS)], width=line)

    for row, col in marks or ():
        if not (0 <= row < gh and 0 <= col < gw):
            raise ValueError(f"mark ({row}, {col}) is outside the {gh}x{gw} grid")
        x0, x1 = round(col * width / gw), round((col + 1) * width / gw) - 1
        y0, y1 = round(row * height / gh), round((row + 1) * height / gh) - 1
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=_MARK_COLOR, width=line)
        draw.line((x0, y0, x1, y1), fill=_MARK_COLOR, width=line)
        draw.line((x0, y1, x1, y0), fill=_MARK_COLOR, width=line)

    if title:
        font = ImageFont.load_default()
        left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
        pad = 2
        draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
        draw.text((pad - left, pad - top), title, fill=(255, 255, 255), font=font)
    return out


def side_by_side(
    images: Sequence[Image.Image], titles: Sequence[str] | None = None, gap: int = 4
) -> Image.Image:
    """Paste images left to right on a white canvas, top-aligned, ``gap`` pixels apart, each under its title.

    ``titles``, when given, has one entry per image and is written in a band above the images. The canvas is
    ``sum(widths) + gap * (n - 1)`` wide and ``max(heights)`` (+ the title band) tall.
    """
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap!r}")
    tiles = [to_rgb(im) for im in images]
    font = ImageFont.load_default()
    band = 0
    if titles is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        band = max(probe.textbbox((0, 0), t or " ", font=font)[3] for t in titles) + 6
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    height = max(t.height for t in tiles) + band
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for k, tile in enumerate(tiles):
        canvas.paste(tile, (x, band))
        if titles is not None and titles[k]:
            draw.text((x + 2, 3), titles[k], fill=(0, 0, 0), font=font)
        x += tile.width + gap
    return canvas


@dataclass
class Panel:
    """One picture of a figure: an image, optionally overlaid with an attention grid, boxes and marked cells.

    Figures are lists of panels (`render_panels`): the Funnel's heatmap with its boxes, ViCrop's question, general
    and relative maps, or a method's before/after maps with its sink tokens marked.
    """

    image: Image.Image
    grid_map: MapLike | None = None
    boxes: Sequence[Sequence[float]] = field(default_factory=list)
    marks: Sequence[tuple[int, int]] = field(default_factory=list)
    title: str = ""
    value_range: tuple[float, float] | None = None  # shared colour scale (see `draw_attention`); None: min-max

    def draw(self) -> Image.Image:
        """The panel as an RGB image (the plain image when there is no grid; boxes still drawn)."""
        if self.grid_map is None:
            if not self.boxes and not self.marks:
                return to_rgb(self.image)
            grid = np.zeros((1, 1))
            return draw_attention(self.image, grid, boxes=self.boxes, marks=self.marks or None, alpha=0.0)
        return draw_attention(self.image, self.grid_map, boxes=self.boxes, marks=self.marks or None,
                              value_range=self.value_range)


def render_panels(panels: Sequence[Panel], gap: int = 4) -> Image.Image:
    """Draw each panel and lay them out left to right under their titles (see `side_by_side`)."""
    if not panels:
        raise ValueError("render_panels needs at least one panel")
    return side_by_side([p.draw() for p in panels], titles=[p.title for p in panels], gap=gap)


def render_rows(rows: Sequence[Sequence[Panel]], gap: int = 4) -> Image.Image:
    """Draw rows of panels: each row left to right (`render_panels`), the rows top to bottom, left-aligned.

    Used for figures with one row per layer (a method's before/after maps). The canvas is as wide as the widest
    row and as tall as all rows plus ``gap`` pixels between them.
    """
    if not rows or any(not row for row in rows):
        raise ValueError("render_rows needs at least one row, and every row at least one panel")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap!r}")
    strips = [render_panels(row, gap=gap) for row in rows]
    width = max(s.width for s in strips)
    height = sum(s.height for s in strips) + gap * (len(strips) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for strip in strips:
        canvas.paste(strip, (0, y))
        y += strip.height + gap
    return canvas
