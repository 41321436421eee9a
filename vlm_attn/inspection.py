"""`vlm_attn.inspect_attention`: what an attention method changes in where the model looks, layer by layer.

For each chosen decoder layer it reads the attention of the last prompt row (the row that predicts the first
answer token) to the image tokens, mean over heads, twice:

- **before**: the unsteered model (a pass with no method active: the plain softmax of the model's own scores);
- **after**: the steered model (a pass with the methods active, read after their logit and probability edits at
  that layer, so it includes what the edits in earlier layers did to this row).

Both are raw probabilities on the image's token grid: each map sums to the share of the row's attention that the
grid's tokens get (the image mass), so a method that moves attention onto the image makes the after-map heavier.
Methods that find sink tokens (VAR) expose them per layer; the visual ones are marked as grid cells. The figure
(`Inspection.render`) draws per layer the before and after maps and their change (after minus before), each with
its colour bar, over the part of the image the model saw (`FamilyAdapter.seen_region`).

    look = vlm_attn.inspect_attention(model, processor, "street.jpg", "What colour is the car?",
                                      vlm_attn.VARConfig(), layers=[2, 14])
    look.layer(14).after_mass, look.layer(14).sink_cells
    look.render().save("look.png")

The two passes stop after the deepest chosen layer (later layers cannot change the rows read) and never use
`output_attentions`: only the captured rows are recomputed explicitly (SPEC §1.5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from .engine.method import CallState
from .methods.crops import Region, with_vqa_suffix
from .methods.registry import config_list_of
from .passes.inspect_capture import capture_rows
from .patches.base import ImageGrid, get_adapter
from .prompting import build_inputs

DEFAULT_LAYER_COUNT = 4


@dataclass(frozen=True)
class LayerInspection:
    """One layer's last-row attention to the image, before and after the methods.

    Attributes:
        layer: the decoder layer (0-based).
        before: float32 ``(gh, gw)`` head-mean probabilities of the unsteered model's last prompt row on the grid.
        after: the same for the steered model.
        before_mass: the unsteered row's attention on all of the prompt's image tokens (equals ``before.sum()``
            when the grid covers every image token, as for LLaVA and Qwen-VL).
        after_mass: the same for the steered row.
        sink_cells: ``(row, col)`` grid cells of the visual sink tokens a method (VAR) found at this layer, in
            token order; empty when none were found or no method reports sinks here (see `sinks_known`).
        sinks_known: whether an active method reported its sink tokens for this layer.
        visual_sinks_off_grid: visual sinks among image tokens outside the drawn grid (e.g. LLaVA-NeXT tiles).
        text_sinks: sink tokens that are not image tokens (0 when `sinks_known` is False).
    """

    layer: int
    before: torch.Tensor
    after: torch.Tensor
    before_mass: float
    after_mass: float
    sink_cells: tuple[tuple[int, int], ...] = ()
    sinks_known: bool = False
    visual_sinks_off_grid: int = 0
    text_sinks: int = 0

    @property
    def change(self) -> torch.Tensor:
        """``after - before`` on the grid (positive where the methods added attention)."""
        return self.after - self.before

    @property
    def changed(self) -> bool:
        """Whether the methods changed this layer's row on the grid at all."""
        return not torch.equal(self.before, self.after)

    def to_dict(self, maps: bool = True) -> dict[str, Any]:
        """Plain, JSON-ready data; ``maps=False`` leaves out the two grids (nested lists)."""
        out: dict[str, Any] = {
            "layer": self.layer, "before_mass": self.before_mass, "after_mass": self.after_mass,
            "sinks_known": self.sinks_known, "sink_cells": [list(c) for c in self.sink_cells],
            "visual_sinks_off_grid": self.visual_sinks_off_grid, "text_sinks": self.text_sinks,
        }
        if maps:
            out["before"] = self.before.tolist()
            out["after"] = self.after.tolist()
        return out


@dataclass(frozen=True)
class Inspection:
    """What `inspect_attention` saw: the image, its token grid, and one `LayerInspection` per chosen layer.

    `region` is where the grid lies on the image, ``(left, top, right, bottom)`` in image pixels: the part the
    processor showed the model (`FamilyAdapter.seen_region`, e.g. LLaVA's centre square).
    """

    image: Image.Image
    prompt: str
    grid: ImageGrid
    layers: tuple[LayerInspection, ...]
    methods: tuple[str, ...]
    region: Region

    def layer(self, index: int) -> LayerInspection:
        """The inspection of decoder layer `index` (KeyError naming the inspected layers otherwise)."""
        for item in self.layers:
            if item.layer == index:
                return item
        raise KeyError(f"layer {index} was not inspected; inspected layers: {[x.layer for x in self.layers]}")

    def panel_rows(self, min_width: int = 256) -> list[list[Any]]:
        """One row of `vlm_attn.viz.Panel` per layer: "before", "after" and "change" (after minus before).

        The image is enlarged (aspect kept) to at least `min_width` pixels so that titles and sink marks stay
        legible. Before and after share one colour scale per layer, from 0 to the largest cell of the two maps, so
        they compare; the change panel is blue where the methods took attention away, white where nothing moved and
        red where they added it, on a scale symmetric about 0 that its own largest change fills, so that even a
        small change shows. Each panel carries its colour bar; heatmaps cover the region the model saw.
        """
        from .viz import Panel

        shown = self.image
        if shown.width < min_width:
            height = max(1, round(shown.height * min_width / shown.width))
            shown = shown.resize((min_width, height), Image.Resampling.BICUBIC)
        fx, fy = shown.width / self.image.width, shown.height / self.image.height
        left, top, right, bottom = self.region
        region = (left * fx, top * fy, right * fx, bottom * fy)
        names = "+".join(self.methods)
        rows = []
        for item in self.layers:
            peak = float(max(item.before.max(), item.after.max()))
            scale = (0.0, peak if peak > 0 else 1.0)
            change = item.change
            moved = float(change.abs().max())
            marks = list(item.sink_cells)
            rows.append([
                Panel(shown, item.before, marks=marks, value_range=scale, region=region, mark_label="visual sink",
                      title=f"L{item.layer} before: image {item.before_mass:.3f}"),
                Panel(shown, item.after, marks=marks, value_range=scale, region=region, mark_label="visual sink",
                      title=f"L{item.layer} after {names}: image {item.after_mass:.3f}"),
                Panel(shown, change, value_range=(-moved, moved) if moved > 0 else (-1.0, 1.0), region=region,
                      cmap="diverging", alpha=0.8,
                      title=f"L{item.layer} change (after - before): image {item.after_mass - item.before_mass:+.3f}"),
            ])
        return rows

    def render(self, min_width: int = 256) -> Image.Image:
        """The figure: per layer (top to bottom) the before, after and change heatmaps, visual sinks in red."""
        from .viz import render_rows

        return render_rows(self.panel_rows(min_width))

    def to_dict(self, maps: bool = True) -> dict[str, Any]:
        """Plain, JSON-ready data: prompt, grid, methods and each layer (`LayerInspection.to_dict`)."""
        return {
            "prompt": self.prompt, "grid": list(self.grid.shape), "region": list(self.region),
            "methods": list(self.methods),
            "layers": [item.to_dict(maps) for item in self.layers],
        }


def default_layers(num_layers: int, count: int = DEFAULT_LAYER_COUNT) -> tuple[int, ...]:
    """Up to `count` layers spread evenly over 2 .. L-1 (the default scope of VAR, PAI and PAINT), ends included."""
    first = 2 if num_layers > 2 else 0
    span = list(range(first, num_layers))
    if len(span) <= count:
        return tuple(span)
    step = (len(span) - 1) / (count - 1)
    return tuple(sorted({span[round(k * step)] for k in range(count)}))


def resolve_layers(layers: Iterable[int] | None, num_layers: int) -> tuple[int, ...]:
    """The sorted, de-duplicated layers to inspect (default: `default_layers`); ValueError when out of range."""
    if layers is None:
        return default_layers(num_layers)
    chosen = tuple(layers)
    if not chosen:
        raise ValueError("layers must name at least one decoder layer")
    bad = [x for x in chosen if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {num_layers}-layer language model (0..{num_layers - 1})")
    return tuple(sorted(set(chosen)))


def _sinks_on_grid(
    methods: Sequence[Any], call: CallState, layer: int, grid: ImageGrid
) -> tuple[tuple[tuple[int, int], ...], bool, int, int]:
    """(sink cells, sinks known, visual sinks off the grid, text sinks) of sample 0 at `layer`.

    Any method with a ``sink_positions(call, layer) -> (B, T) bool | None`` reports sinks (VAR does); several are
    united.
    """
    found = [m.sink_positions(call, layer) for m in methods if hasattr(m, "sink_positions")]
    found = [s for s in found if s is not None]
    if not found:
        return (), False, 0, 0
    sinks = found[0]
    for other in found[1:]:
        sinks = sinks | other
    image = call.image_mask[0, : sinks.shape[1]]
    sinks = sinks[0, : image.shape[0]]
    visual = sinks[image].nonzero().flatten().tolist()  # indices among the sample's image tokens
    gw = grid.shape[1]
    on_grid = [k - grid.start for k in visual if grid.start <= k < grid.start + grid.cells]
    cells = tuple((k // gw, k % gw) for k in on_grid)
    return cells, True, len(visual) - len(on_grid), int((sinks & ~image).sum())


def inspect_attention(
    model: nn.Module,
    processor: Any,
    image: Any,
    prompt: str,
    configs: Any = None,
    layers: Iterable[int] | None = None,
    vqa: bool = False,
) -> Inspection:
    """Where the model's last prompt row looks on the image, before and after attention methods, per layer.

    Args:
        model, processor: a supported VLM and its processor (`vlm_attn.load_model`).
        image: one image (path or PIL; any mode, converted to RGB).
        prompt: the question or instruction (one user turn with the image).
        configs: attention-method configs (e.g. ``VARConfig()``), applied for this call only. None inspects the
            methods already applied with `vlm_attn.apply` (they stay applied).
        layers: decoder layers to inspect (0-based); None picks up to 4 spread over 2 .. L-1.
        vqa: append the short-answer VQA instruction to the prompt.

    Returns an `Inspection` (maps, image masses and sink cells per layer; `.render()` draws the figure).
    Raises ValueError for layers out of range or a prompt without image tokens, RuntimeError when `configs` are
    given while methods are already applied (or neither), and UnsupportedModelError for a family whose image
    grid is unknown.
    """
    from .api import HANDLE_ATTR, apply
    from .generation import load_rgb

    adapter = get_adapter(model)
    chosen = resolve_layers(layers, len(adapter.decoder_layers()))
    config_list = config_list_of(configs)
    existing = getattr(model, HANDLE_ATTR, None)
    if config_list and existing is not None:
        raise RuntimeError(
            "attention methods are already applied to this model: pass them either to vlm_attn.apply or in "
            "configs=, not both"
        )
    if not config_list and existing is None:
        raise RuntimeError("nothing to inspect: pass configs (e.g. VARConfig()) or apply methods with vlm_attn.apply")
    rgb = load_rgb(image)
    text = with_vqa_suffix(prompt, vqa)
    inputs = build_inputs(processor, [rgb], [text]).to(model.device)
    grid = adapter.image_grid(inputs)
    region = adapter.seen_region(processor, rgb.size, inputs)
    handle = existing if existing is not None else apply(model, config_list, processor=processor)
    try:
        before, _ = capture_rows(model, adapter, inputs, chosen, steered=False)
        after, call = capture_rows(model, adapter, inputs, chosen, steered=True)
        methods = handle.engine.methods
        sinks = {layer: _sinks_on_grid(methods, call, layer, grid) for layer in chosen}
        names = tuple(getattr(m, "name", type(m).__name__) for m in methods)
    finally:
        if existing is None:
            handle.remove()
    items = []
    for layer in chosen:
        rows_before, rows_after = before.get(layer), after.get(layer)
        if not rows_before or rows_before[0].numel() == 0 or not rows_after:
            raise ValueError("the prompt holds no image tokens: put the image in the prompt")
        row_b, row_a = rows_before[0], rows_after[0]
        if grid.start + grid.cells > row_b.numel():
            raise ValueError(
                f"image grid {grid.shape} at offset {grid.start} does not fit the prompt's {row_b.numel()} image tokens"
            )
        cells, known, off_grid, text_sinks = sinks[layer]
        items.append(LayerInspection(
            layer=layer,
            before=row_b[grid.start : grid.start + grid.cells].reshape(grid.shape),
            after=row_a[grid.start : grid.start + grid.cells].reshape(grid.shape),
            before_mass=float(row_b.sum()),
            after_mass=float(row_a.sum()),
            sink_cells=cells,
            sinks_known=known,
            visual_sinks_off_grid=off_grid,
            text_sinks=text_sinks,
        ))
    return Inspection(image=rgb, prompt=text, grid=grid, layers=tuple(items), methods=names, region=region)
