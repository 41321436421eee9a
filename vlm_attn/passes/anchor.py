"""Capture one layer's last-row attention to the image tokens, in one forward (Visual Funnel / ViCrop anchoring).

The peer implementations call the model with `output_attentions=True`, which forces eager attention in every layer
and keeps a (B, H, T, T) tensor per layer. Here the engine runs SDPA everywhere and recomputes explicitly only the
last query row at the anchor layer; :class:`AnchorCapture` observes that row's probabilities and changes nothing.
The forward then stops right after the anchor layer (the later layers and the LM head cannot change the captured
row), so the anchoring pass costs less than a plain prefill.

If attention methods are already applied to the model (`vlm_attn.apply`), the capture joins that engine for the
pass and sees the probabilities *after* their edits: the map is what the steered model looks at. Otherwise a
temporary engine carries the capture alone and is removed afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine import capturing
from ..engine.method import AttentionMethod, CallState, LayerView, RowSet, last_row
from ..patches.base import FamilyAdapter, ImageGrid, get_adapter
from ..methods.funnel import normalize_map

logger = logging.getLogger(__name__)


class _AnchorReached(Exception):
    """Raised by a forward hook after the anchor layer to end the anchoring forward early."""


class AnchorCapture(AttentionMethod):
    """Observes the last prompt row at one decoder layer: head-mean probabilities on each sample's image keys.

    Results go to `call.store[self.name]` as ``{"rows": [(N_b,) float32 tensors per sample], "layers": [...]}``;
    `edit_probs` always returns None, so the attention output is untouched.
    """

    name = "anchor_capture"

    def __init__(self, layer: int):
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"anchor layer must be an int >= 0, got {layer!r}")
        self.layer = layer

    def bind(self, model: nn.Module, adapter: FamilyAdapter, num_layers: int) -> None:
        if self.layer >= num_layers:
            raise ValueError(f"anchor layer {self.layer} out of range for a {num_layers}-layer language model")

    def rows(self, view: LayerView) -> torch.Tensor | None:
        if view.layer_idx != self.layer or not view.prefill:
            return None
        return last_row(view)

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> None:
        # rows.own has one True per sample with an image (the last row); other methods may have added rows.
        which = rows.own.to(torch.int8).argmax(dim=1)  # (B,)
        batch = torch.arange(probs.shape[0], device=probs.device)
        row = probs[batch, :, which, :].mean(dim=1)  # (B, K): head mean of the last row
        keys = view.image_keys
        store = view.call.store.setdefault(self.name, {"rows": [], "layers": []})
        store["rows"] = [row[b][keys[b]].detach().float().cpu() for b in range(row.shape[0])]
        store["layers"].append(view.layer_idx)
        return None

    def summary(self, call: CallState) -> dict[str, Any]:
        store = call.store.get(self.name, {})
        return {"active": bool(store), "layers": list(store.get("layers", []))}


@dataclass(frozen=True)
class AnchorMap:
    """The anchoring result for one image.

    Attributes:
        attention: float32 ``(gh, gw)`` map (clipped, summing to 1) on the image's token grid.
        raw: the head-mean probabilities of the last row on the grid's tokens, before normalisation (the share of
            the row's attention each image token got).
        layer: the decoder layer read.
        grid: where the grid sat among the sample's image tokens.
        captured_layers: every layer the capture recomputed a row at (one entry: the anchor layer).
        steered: whether attention methods applied to the model were active during the pass.
    """

    attention: torch.Tensor
    raw: torch.Tensor
    layer: int
    grid: ImageGrid
    captured_layers: tuple[int, ...]
    steered: bool


def resolve_layer(adapter: FamilyAdapter, layer: int | None) -> int:
    """The anchor layer: `layer` when given (checked against the depth), else the family default."""
    depth = len(adapter.decoder_layers())
    if layer is None:
        return adapter.anchor_layer(depth)
    if not 0 <= layer < depth:
        raise ValueError(f"anchor layer {layer} out of range for a {depth}-layer language model (0..{depth - 1})")
    return layer


def capture_anchor_map(
    model: nn.Module, inputs: Any, layer: int | None = None, image_index: int = 0, stop_early: bool = True
) -> AnchorMap:
    """Run one forward over `inputs` (one prompt, processor output) and return the anchor layer's map.

    Args:
        model: a supported VLM, with or without methods applied through `vlm_attn.apply`.
        inputs: processor output for a batch of one prompt holding the image (e.g. `build_inputs`).
        layer: decoder layer to read; None takes the family default (`adapter.anchor_layer`).
        image_index: which of the prompt's images the map is for.
        stop_early: end the forward after the anchor layer (later layers cannot change the captured row).

    Raises `ValueError` when the prompt holds no image tokens or the grid does not fit them.
    """
    adapter = get_adapter(model)
    layer = resolve_layer(adapter, layer)
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"the anchoring pass takes one prompt, got a batch of {ids.shape[0]}")
    grid = adapter.image_grid(inputs, image_index)
    capture = AnchorCapture(layer)

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _AnchorReached

    with capturing(model, capture, adapter) as engine:
        steered = len(engine.methods) > 1
        stopper = engine.layers[layer].register_forward_hook(stop) if stop_early else None
        try:
            with torch.no_grad(), contextlib.suppress(_AnchorReached):  # the stop hook ends the forward early
                model(**inputs, use_cache=False)
            call = engine.call
            store = call.store.get(capture.name) if call is not None else None
        finally:
            if stopper is not None:
                stopper.remove()
    if not store or not store["rows"]:
        raise ValueError("the anchoring prompt holds no image tokens: put the image in the prompt")
    row = store["rows"][0]
    if grid.start + grid.cells > row.numel():
        raise ValueError(
            f"image grid {grid.shape} at offset {grid.start} does not fit the prompt's {row.numel()} image tokens"
        )
    raw = row[grid.start : grid.start + grid.cells].reshape(grid.shape)
    logger.debug("anchor layer %d: grid %s, %.3f of the row on the grid", layer, grid.shape, float(raw.sum()))
    return AnchorMap(
        attention=normalize_map(raw, grid.shape),
        raw=raw,
        layer=layer,
        grid=grid,
        captured_layers=tuple(store["layers"]),
        steered=steered,
    )
