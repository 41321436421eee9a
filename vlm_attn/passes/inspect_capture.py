"""Observe the last prompt row's attention to the image tokens at several decoder layers (for `inspect`).

:class:`RowCapture` is an observe-only engine method, the multi-layer sibling of
:class:`vlm_attn.passes.anchor.AnchorCapture`: at each chosen layer it asks the engine for the last query row of
the prefill, reads that row's post-softmax probabilities (head mean) on the image keys, and changes nothing
(`edit_probs` returns None, so the attention output stays the fast SDPA one).

What it sees depends on where it sits in the engine's method list, not on any engine hook: the engine hands the
probabilities to the methods in order, so a capture placed *last* sees them after every other method's logit and
probability edits (the steered row), and a capture that runs *alone* in the engine sees the plain softmax (the
unsteered row). :func:`capture_rows` runs one such pass, temporarily swapping the engine's method list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..engine import capturing
from ..engine.method import AttentionMethod, CallState, LayerView, RowSet, last_row
from ..patches.base import FamilyAdapter


class _LastLayerDone(Exception):
    """Raised by a forward hook after the deepest chosen layer to end the capture forward early."""


class RowCapture(AttentionMethod):
    """Records, at each chosen layer, the last prefill row's head-mean probabilities on each sample's image keys.

    Results go to ``call.store[self.name][layer]``: a list with one ``(N_b,)`` float32 CPU tensor per sample (its
    N_b image tokens, in position order). Samples without image tokens get an empty tensor.
    """

    name = "row_capture"

    def __init__(self, layers: Iterable[int]):
        chosen = tuple(layers)
        bad = [x for x in chosen if isinstance(x, bool) or not isinstance(x, int) or x < 0]
        if not chosen or bad:
            raise ValueError(f"capture layers must be a non-empty list of ints >= 0, got {list(chosen)!r}")
        self.layers = frozenset(chosen)

    def bind(self, model: nn.Module, adapter: FamilyAdapter, num_layers: int) -> None:
        bad = sorted(x for x in self.layers if x >= num_layers)
        if bad:
            raise ValueError(
                f"layers {bad} out of range for a {num_layers}-layer language model (0..{num_layers - 1})"
            )

    def rows(self, view: LayerView) -> torch.Tensor | None:
        if view.layer_idx not in self.layers or not view.prefill:
            return None
        return last_row(view)

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> None:
        # rows.own holds at most one True per sample (its last row); other methods may have added rows to the set.
        which = rows.own.to(torch.int8).argmax(dim=1)  # (B,)
        batch = torch.arange(probs.shape[0], device=probs.device)
        row = probs[batch, :, which, :].mean(dim=1)  # (B, K)
        has_row = rows.own.any(dim=1)
        keys = view.image_keys & has_row[:, None]
        store = view.call.store.setdefault(self.name, {})
        store[view.layer_idx] = [row[b][keys[b]].detach().float().cpu() for b in range(row.shape[0])]
        return None

    def summary(self, call: CallState) -> dict[str, Any]:
        store = call.store.get(self.name, {})
        return {"active": bool(store), "layers": sorted(store)}


def capture_rows(
    model: nn.Module, adapter: FamilyAdapter, inputs: Any, layers: Iterable[int], steered: bool
) -> tuple[dict[int, list[torch.Tensor]], CallState]:
    """One no-cache forward over `inputs` that records the last row at `layers`; returns (rows per layer, call).

    Args:
        model: the model, with methods applied (`vlm_attn.apply`) or not.
        adapter: the model's family adapter (used when nothing is applied).
        inputs: processor output for the prompt.
        layers: decoder layers to read.
        steered: True runs the applied methods with the capture appended last (rows after their edits); False
            runs the capture alone (the unsteered model's rows, bitwise its attention output).

    The forward stops after the deepest chosen layer: later layers cannot change the captured rows. The returned
    `CallState` is that forward's (sinks and other per-call data of the methods, for the layers it reached).
    """
    capture = RowCapture(layers)

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _LastLayerDone

    with capturing(model, capture, adapter, steered=steered) as engine:
        stopper = engine.layers[max(capture.layers)].register_forward_hook(stop)
        try:
            with torch.no_grad(), contextlib.suppress(_LastLayerDone):  # the stop hook ends the forward early
                model(**inputs, use_cache=False)
            call = engine.call
        finally:
            stopper.remove()
    if call is None:
        raise RuntimeError("the capture forward did not reach the engine (were input_ids passed?)")
    return dict(call.store.get(capture.name, {})), call
