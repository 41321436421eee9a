"""Pictures of attention maps for reports and debugging: heatmap overlays, boxes, marked tokens, colour bars.

Only Pillow and numpy are used (no matplotlib): the heat colormap is a five-stop piecewise-linear approximation of
"inferno" (dark purple -> red -> yellow), which stays readable in greyscale print and for colour-blind readers; the
diverging one (blue -> white -> red) draws signed maps such as the change a method makes. A heatmap covers the
part of the image the model saw (the seen region); the rest of the image is greyed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_attn.methods.crops import MapLike, Region, as_grid, check_region, to_rgb

# (position in [0, 1], RGB) stops of the colormap.
_COLORMAP_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.50, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.00, (252, 255, 164)),
)
# Blue -> white -> red (a ColorBrewer RdBu-like ramp): 0.5 is zero change.
_DIVERGING_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (33, 102, 172)),
    (0.25, (146, 197, 222)),
    (0.50, (247, 247, 247)),
    (0.75, (244, 165, 130)),
    (1.00, (178, 24, 43)),
)
_GREY = np.array([128.0, 128.0, 128.0])  # what the image outside the seen region is faded towards
# Outline colours for successive boxes (e.g. the Funnel's focal, alpha1, alpha2 boxes).
_BOX_COLORS: tuple[tuple[int, int, int], ...] = ((255, 255, 255), (0, 255, 255), (0, 255, 0), (255, 0, 255))
_MARK_COLOR = (255, 0, 0)


def _ramp(values: np.ndarray, table: tuple[tuple[float, tuple[int, int, int]], ...]) -> np.ndarray:
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    stops = np.array([s for s, _ in table])
    colors = np.array([c for _, c in table], dtype=np.float64)
    channels = [np.interp(values, stops, colors[:, k]) for k in range(3)]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` (any shape) to uint8 RGB, shape ``values.shape + (3,)``; values are clipped."""
    return _ramp(values, _COLORMAP_STOPS)


def diverging_colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` to blue (0) - white (0.5) - red (1) uint8 RGB; values are clipped.

    With a symmetric range ``(-m, m)`` scaled to ``[0, 1]``, negative changes are blue, no change is white and
    positive changes are red.
    """
    return _ramp(values, _DIVERGING_STOPS)


COLORMAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"heat": colormap, "diverging": diverging_colormap}


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


def box_color(index: int) -> tuple[int, int, int]:
    """Outline colour of the `index`-th box of a panel (white, cyan, green, magenta, then cycling)."""
    return _BOX_COLORS[index % len(_BOX_COLORS)]


def _region_pixels(region: Region | None, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The seen region rounded to whole pixels (it may reach past the image); the whole image when None."""
    left, top, right, bottom = check_region(region, size)
    box = (round(left), round(top), round(right), round(bottom))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"region {region!r} is less than a pixel wide")
    return box


def _heat(
    grid: np.ndarray, size: tuple[int, int], value_range: tuple[float, float] | None, cmap: str
) -> np.ndarray:
    """``(H, W, 3)`` float colours of `grid` scaled to `size = (W, H)` with colour map `cmap`."""
    if cmap not in COLORMAPS:
        raise ValueError(f"cmap must be one of {sorted(COLORMAPS)}, got {cmap!r}")
    return COLORMAPS[cmap](_upsample(grid, size, value_range)).astype(np.float64)


def _outline_pixels(box: Sequence[float], size: tuple[int, int], line: int) -> np.ndarray:
    """Sorted flat indices ``y * W + x`` of the `line`-pixel outline of `box`, inside its edges and the image."""
    width, height = size
    left, top, right, bottom = (round(float(v)) for v in box)
    if right <= left or bottom <= top:
        raise ValueError(f"box {tuple(box)} is empty")
    bands = ((top, top + line, left, right), (bottom - line, bottom, left, right),
             (top, bottom, left, left + line), (top, bottom, right - line, right))
    parts = []
    for y0, y1, x0, x1 in bands:
        y0, y1 = max(y0, top, 0), min(y1, bottom, height)
        x0, x1 = max(x0, left, 0), min(x1, right, width)
        if y1 > y0 and x1 > x0:
            ys, xs = np.mgrid[y0:y1, x0:x1]
            parts.append((ys * width + xs).ravel())
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], line: int | None = None) -> Image.Image:
    """Outline `boxes` on a copy of `image` in `box_color` order, so that boxes sharing edges all stay visible.

    Where one outline runs alone it is solid; where several boxes share outline pixels (coincident boxes, e.g.
    focal and alpha boxes capped at the image's shorter side, or boxes pushed against the same image edge) the
    shared pixels alternate between their colours in dashes of ``3 * line`` pixels, so each box shows along the
    whole shared stretch. Work is proportional to the outlines' length, not the image's area.
    """
    out = to_rgb(image)
    if not boxes:
        return out
    line = line or _line_width(out.size)
    outlines = [_outline_pixels(box, out.size, line) for box in boxes]
    keys = np.concatenate(outlines)
    owners = np.concatenate([np.full(len(o), k) for k, o in enumerate(outlines)])
    order = np.lexsort((owners, keys))  # by pixel, then by box order
    keys, owners = keys[order], owners[order]
    _, first, count = np.unique(keys, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(first)), count)
    rank = np.arange(len(keys)) - first[group]  # each box's rank among the boxes covering its pixel
    ys, xs = np.divmod(keys, out.width)
    turn = ((xs + ys) // (3 * line)) % count[group]  # which covering box owns this dash
    mine = rank == turn
    arr = np.array(out).reshape(-1, 3)
    arr[keys[mine]] = np.array([box_color(k) for k in range(len(boxes))], dtype=np.uint8)[owners[mine]]
    return Image.fromarray(arr.reshape(out.height, out.width, 3))


def draw_attention(
    image: Image.Image,
    grid_map: MapLike,
    boxes: Sequence[Sequence[float]] | None = None,
    title: str | None = None,
    marks: Sequence[tuple[int, int]] | None = None,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
    region: Region | None = None,
    cmap: str = "heat",
) -> Image.Image:
    """Overlay an attention grid on ``image`` as a heatmap, with optional boxes, marked cells and a title.

    Args:
        image: the original image (any mode; converted to RGB, alpha over white).
        grid_map: ``(gh, gw)`` attention map over the image-token grid; min-max scaled for display, so only its
            shape matters, not its sum.
        boxes: ``(left, top, right, bottom)`` pixel boxes (right/bottom exclusive), outlined in white, cyan,
            green, magenta, then cycling; coincident outlines alternate in dashes (`draw_boxes`).
        title: text drawn in a dark strip over the top-left corner.
        marks: ``(row, col)`` grid cells outlined in red and crossed, e.g. the visual sink tokens.
        alpha: heatmap opacity in ``[0, 1]``.
        value_range: ``(low, high)`` mapped to the ends of the colormap instead of the map's own min-max; give
            several maps the same range to compare them (e.g. attention before and after a method).
        region: ``(left, top, right, bottom)`` in image pixels where the grid lies (what the model saw,
            `FamilyAdapter.seen_region`); the heatmap and marks cover it, the image outside it is greyed.
            None: the whole image.
        cmap: "heat" (the inferno-like map) or "diverging" (blue - white - red, for signed maps such as a change).

    Returns:
        A new RGB image of the same size as ``image``; the input is left untouched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    base = to_rgb(image)
    grid = as_grid(grid_map).numpy()
    gh, gw = grid.shape
    width, height = base.size
    left, top, right, bottom = _region_pixels(region, base.size)

    # The heat over the region, pasted where the region meets the image; outside the region the image is greyed.
    heat = _heat(grid, (right - left, bottom - top), value_range, cmap)
    pixels = np.asarray(base, dtype=np.float64)
    blended = 0.5 * pixels + 0.5 * _GREY
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        inside = heat[y0 - top : y1 - top, x0 - left : x1 - left]
        blended[y0:y1, x0:x1] = (1.0 - alpha) * pixels[y0:y1, x0:x1] + alpha * inside
    out = draw_boxes(Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)), boxes or ())
    draw = ImageDraw.Draw(out)
    line = _line_width(base.size)

    cw, ch = (right - left) / gw, (bottom - top) / gh
    for row, col in marks or ():
        if not (0 <= row < gh and 0 <= col < gw):
            raise ValueError(f"mark ({row}, {col}) is outside the {gh}x{gw} grid")
        mx0, mx1 = round(left + col * cw), round(left + (col + 1) * cw) - 1
        my0, my1 = round(top + row * ch), round(top + (row + 1) * ch) - 1
        draw.rectangle((mx0, my0, max(mx0, mx1), max(my0, my1)), outline=_MARK_COLOR, width=line)
        draw.line((mx0, my0, mx1, my1), fill=_MARK_COLOR, width=line)
        draw.line((mx0, my1, mx1, my0), fill=_MARK_COLOR, width=line)

    if title:
        font = ImageFont.load_default()
        tl, tt, tr, tb = draw.textbbox((0, 0), title, font=font)
        pad = 2
        draw.rectangle((0, 0, tr - tl + 2 * pad, tb - tt + 2 * pad), fill=(0, 0, 0))
        draw.text((pad - tl, pad - tt), title, fill=(255, 255, 255), font=font)
    return out


def _label(value: float) -> str:
    return f"{value:+.3g}" if value < 0 else f"{value:.3g}"


def colorbar(
    height: int, value_range: tuple[float, float], cmap: str = "heat", strip: int = 10
) -> Image.Image:
    """A vertical colour bar ``height`` pixels tall: the gradient of `cmap` (high at the top) and its values.

    Labels give ``high`` at the top and ``low`` at the bottom; a "diverging" bar also labels its middle (0 for a
    symmetric range). The bar is `strip` pixels wide plus the labels, on white.
    """
    if height < 2:
        raise ValueError(f"a colour bar needs a height >= 2, got {height!r}")
    low, high = float(value_range[0]), float(value_range[1])
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(strip, axis=1)
    if cmap not in COLORMAPS:
        raise ValueError(f"cmap must be one of {sorted(COLORMAPS)}, got {cmap!r}")
    gradient = Image.fromarray(COLORMAPS[cmap](ramp))
    labels = [(0, _label(high)), (height, _label(low))]
    if cmap == "diverging":
        labels.insert(1, (height // 2, _label((low + high) / 2)))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), text, font=font)[2] for _, text in labels)
    bar = Image.new("RGB", (strip + 4 + text_w + 2, height), (255, 255, 255))
    bar.paste(gradient, (0, 0))
    draw = ImageDraw.Draw(bar)
    for y, text in labels:
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
        ty = min(max(y - (tb - tt) // 2 - tt, -tt), height - tb)  # centred on y, kept inside the bar
        draw.text((strip + 4, ty), text, fill=(0, 0, 0), font=font)
    return bar


def legend(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int) -> Image.Image:
    """A white band naming each entry beside a swatch of its colour (black-edged, so white shows), wrapped to
    `width` pixels (wider only when one entry alone does not fit)."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_h = max(probe.textbbox((0, 0), text or " ", font=font)[3] for text, _ in entries) + 6
    swatch = row_h - 6
    places, x, y, widest = [], 2, 0, width
    for text, color in entries:
        item_w = swatch + 4 + probe.textbbox((0, 0), text, font=font)[2] + 10
        if x > 2 and x + item_w > width:
            x, y = 2, y + row_h
        places.append((x, y, text, color))
        x += item_w
        widest = max(widest, x)
    band = Image.new("RGB", (max(widest, 1), y + row_h), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for x, y, text, color in places:
        draw.rectangle((x, y + 3, x + swatch, y + 3 + swatch), fill=color, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y + 3), text, fill=(0, 0, 0), font=font)
    return band


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
    and relative maps, or a method's before / after / change maps with its sink tokens marked. A panel with a grid
    carries a colour bar at its right (the values its colours stand for); a panel with boxes or marks carries a
    legend under it (`box_labels` name the boxes in order, `mark_label` the marked cells).
    """

    image: Image.Image
    grid_map: MapLike | None = None
    boxes: Sequence[Sequence[float]] = field(default_factory=list)
    marks: Sequence[tuple[int, int]] = field(default_factory=list)
    title: str = ""
    value_range: tuple[float, float] | None = None  # shared colour scale (see `draw_attention`); None: min-max
    box_labels: Sequence[str] = ()
    mark_label: str = "marked cell"
    region: Region | None = None  # where the grid lies on the image (`draw_attention`); None: the whole image
    cmap: str = "heat"
    alpha: float = 0.5
    colorbar: bool = True

    def value_span(self) -> tuple[float, float] | None:
        """The ``(low, high)`` values at the ends of the colour scale (None without a grid)."""
        if self.grid_map is None:
            return None
        if self.value_range is not None:
            return float(self.value_range[0]), float(self.value_range[1])
        grid = as_grid(self.grid_map)
        return float(grid.min()), float(grid.max())

    def legend_entries(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(name, colour) of each box, then of the marks when there are any."""
        entries = [(self.box_labels[k] if k < len(self.box_labels) else f"box {k + 1}", box_color(k))
                   for k in range(len(self.boxes))]
        if self.marks:
            entries.append((self.mark_label, _MARK_COLOR))
        return entries

    def picture(self) -> Image.Image:
        """The image with the heatmap, boxes and marks, at the image's size (no colour bar, no legend)."""
        if self.grid_map is None:
            if not self.boxes and not self.marks:
                return to_rgb(self.image)
            return draw_attention(self.image, np.zeros((1, 1)), boxes=self.boxes, marks=self.marks or None,
                                  alpha=0.0, region=self.region)
        return draw_attention(self.image, self.grid_map, boxes=self.boxes, marks=self.marks or None,
                              value_range=self.value_range, region=self.region, cmap=self.cmap, alpha=self.alpha)

    def draw(self) -> Image.Image:
        """The panel as an RGB image: `picture`, its colour bar at the right, its legend underneath."""
        shown = self.picture()
        span = self.value_span()
        if span is not None and self.colorbar:
            bar = colorbar(shown.height, span, self.cmap)
            joined = Image.new("RGB", (shown.width + 4 + bar.width, shown.height), (255, 255, 255))
            joined.paste(shown, (0, 0))
            joined.paste(bar, (shown.width + 4, 0))
            shown = joined
        entries = self.legend_entries()
        if entries:
            band = legend(entries, shown.width)
            stacked = Image.new("RGB", (band.width, shown.height + band.height), (255, 255, 255))
            stacked.paste(shown, (0, 0))
            stacked.paste(band, (0, shown.height))
            shown = stacked
        return shown


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
