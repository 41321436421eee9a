"""Helpers for `FamilyAdapter.seen_region`: where the picture a token grid encodes lies on the original image.

Image processors turn the original image into the encoder's input with axis-aligned steps only (resize, centre
crop, pad, split into tiles). Each step keeps the relation ``original = offset + scale * view`` on each axis, so a
`View` carries that relation through the steps and ends with the view's rectangle in original-image pixels. Sizes
are computed with the rules of transformers' PIL image-processor backend (integer truncation in shortest-edge
resizes, floor in centre crops), so the region matches the processor's pixels to the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..methods.crops import Region


@dataclass(frozen=True)
class View:
    """A picture made from the original by axis-aligned steps: ``original_x = x0 + sx * view_x`` (same for y).

    `width` and `height` are the view's size in its own pixels. A view may reach outside the original (padding).
    Offsets and scales are exact fractions, so a region such as LLaVA's x 80..560 comes out exact.
    """

    width: int
    height: int
    x0: Fraction = Fraction(0)
    y0: Fraction = Fraction(0)
    sx: Fraction = Fraction(1)
    sy: Fraction = Fraction(1)

    @classmethod
    def of(cls, image_size: tuple[int, int]) -> "View":
        """The original image itself, ``(W, H)`` pixels."""
        return cls(width=int(image_size[0]), height=int(image_size[1]))

    def resize(self, height: int, width: int) -> "View":
        """The whole view stretched to ``width x height`` (aspect ratio changes when the factors differ)."""
        if height < 1 or width < 1:
            raise ValueError(f"cannot resize a view to {width}x{height}")
        return View(width, height, self.x0, self.y0, self.sx * Fraction(self.width, width),
                    self.sy * Fraction(self.height, height))

    def window(self, left: int, top: int, width: int, height: int) -> "View":
        """The ``width x height`` window whose top-left corner is at ``(left, top)`` of this view.

        Negative offsets or a window larger than the view describe padding: the window then reaches past the
        picture's edges.
        """
        return View(width, height, self.x0 + self.sx * left, self.y0 + self.sy * top, self.sx, self.sy)

    def center_crop(self, height: int, width: int) -> "View":
        """transformers' centre crop: offsets ``(size - crop) // 2`` (padding, with the same offsets, when larger)."""
        return self.window((self.width - width) // 2, (self.height - height) // 2, width, height)

    def pad_to_square(self) -> "View":
        """Pad the shorter side to the longer one, the picture centred (offset ``(long - short) // 2``)."""
        side = max(self.width, self.height)
        return self.window(-((side - self.width) // 2), -((side - self.height) // 2), side, side)

    @property
    def region(self) -> Region:
        """The view's rectangle ``(left, top, right, bottom)`` in original-image pixels."""
        return (float(self.x0), float(self.y0), float(self.x0 + self.sx * self.width),
                float(self.y0 + self.sy * self.height))


def size_value(size: Any, key: str) -> int | None:
    """One entry of an image processor's size setting (a transformers `SizeDict` or a plain dict), or None."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def resized_size(size: Any, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` after the PIL backend's `resize` with setting `size` on a ``width x height`` picture.

    Handles the settings the supported families use: ``height`` + ``width`` (fixed size) and ``shortest_edge``
    (aspect kept, the long side truncated to an integer as transformers does). Other settings raise ValueError.
    """
    fixed_h, fixed_w = size_value(size, "height"), size_value(size, "width")
    shortest = size_value(size, "shortest_edge")
    if shortest is not None and size_value(size, "longest_edge") is None:
        if width <= height:
            return int(shortest * height / width), shortest
        return shortest, int(shortest * width / height)
    if fixed_h is not None and fixed_w is not None:
        return fixed_h, fixed_w
    raise ValueError(f"cannot tell how the image processor resizes with size={size!r}")


def image_processor(processor: Any) -> Any:
    """The image processor of a processor (or the argument itself when it is one)."""
    return getattr(processor, "image_processor", processor)


def clip_style_view(processor: Any, view: View, pad_first: bool = False) -> View:
    """`view` through a CLIP-style processor: optional pad to square, resize by `size`, optional centre crop.

    `pad_first` pads to square before anything else (LLaVA's `do_pad`, LLaVA-OneVision's multi-image prompts).
    """
    proc = image_processor(processor)
    if pad_first:
        view = view.pad_to_square()
    if getattr(proc, "do_resize", True):
        view = view.resize(*resized_size(proc.size, view.height, view.width))
    crop = getattr(proc, "crop_size", None)
    if getattr(proc, "do_center_crop", False) and crop is not None:
        crop_h, crop_w = size_value(crop, "height"), size_value(crop, "width")
        if crop_h is None or crop_w is None:
            raise ValueError(f"cannot tell the centre crop of the image processor: crop_size={crop!r}")
        view = view.center_crop(crop_h, crop_w)
    return view


def anyres_base_view(processor: Any, image_size: tuple[int, int]) -> View:
    """The base (whole-image) view of LLaVA-NeXT / LLaVA-OneVision anyres processing.

    The original is stretched to ``size`` (``height x width``, or ``shortest_edge`` squared), aspect ratio not
    kept, and then goes through the same per-patch steps as the tiles (resize by `size`, optional centre crop).
    """
    proc = image_processor(processor)
    height, width = size_value(proc.size, "height"), size_value(proc.size, "width")
    if height is None or width is None:
        shortest = size_value(proc.size, "shortest_edge")
        if shortest is None:
            raise ValueError(f"cannot tell the anyres base size of the image processor: size={proc.size!r}")
        height = width = shortest
    return clip_style_view(proc, View.of(image_size).resize(height, width))
