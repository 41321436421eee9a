"""The small interface between the engine and the methods.

The engine knows no method: for every attention call it asks each method which query rows it wants to edit,
gathers those rows once, and hands the pre-softmax scores and then the post-softmax probabilities to each method in
order (SPEC §6: logit edits -> softmax -> probability edits). A method answers with the (batch, head, row) cells it
changed; every other head and row keeps the fast SDPA output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..patches.base import FamilyAdapter


Edit = tuple[torch.Tensor, torch.Tensor]  # what an edit returns: the edited tensor and the (B, H, R) cells changed
NO_IMAGE = torch.iinfo(torch.long).max  # `first_image` of a sample without an image: beyond every position


@dataclass
class CallState:
    """Everything one `generate` (or one stand-alone forward) accumulates. Reset when the KV cache is empty."""

    image_mask: torch.Tensor  # (B, T) bool: which absolute positions seen so far are image tokens
    prefill: bool = True  # whether the forward now running started from an empty cache
    # (B, T0) bool: prompt positions that are real tokens, from the prefill's 2-D attention mask (False on left
    # padding); None when the forward got no 2-D mask (no padding, or prepared 4-D masks)
    prompt_mask: torch.Tensor | None = None
    replay: bool = False  # a re-run of the previous call's prefill on the same images (`engine.api.replaying`)
    guidance_ran: bool = False  # the image-free guidance processor ran in this call (see Engine.mark_guidance)
    guidance_warned: bool = False  # a decode step ran without it (logged once per call)
    store: dict[Any, Any] = field(default_factory=dict)  # per-method scratch data, keyed by the method object
    report: dict[Any, Any] = field(default_factory=dict)  # per-method counters for `handle.report()`, same keys
    _cache: dict[Any, Any] = field(default_factory=dict)  # per-forward derived tensors

    @property
    def seq_len(self) -> int:
        return self.image_mask.shape[1]

    def first_image(self) -> torch.Tensor:
        """(B,) position of the first image token per sample; NO_IMAGE (above every position) when there is none.

        Kept across decode steps, so the "none" value must stay above every later position too."""
        if "first_image" not in self._cache:
            mask = self.image_mask
            pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            self._cache["first_image"] = torch.where(mask, pos, NO_IMAGE).min(dim=1).values
        return self._cache["first_image"]

    def to_key_slots(self, per_position: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Map a (B, T, ...) tensor over absolute positions to key slots (B, K, ...).

        A dynamic cache holds the last `kv_len` positions; a static cache is longer than the sequence and slot j is
        position j (slots past the sequence are empty, filled with False / 0, and masked by the caller's mask).
        """
        t = per_position.shape[1]
        if kv_len <= t:
            return per_position[:, t - kv_len :]
        pad = [0, 0] * (per_position.dim() - 2) + [0, kv_len - t]
        return torch.nn.functional.pad(per_position, pad, value=False if per_position.dtype == torch.bool else 0.0)

    def view_parts(self, q_len: int, kv_len: int) -> dict[str, torch.Tensor]:
        """Per-forward tensors shared by every layer's view (computed once per (q_len, kv_len))."""
        key = ("view", q_len, kv_len)
        if key not in self._cache:
            t, dev = self.seq_len, self.image_mask.device
            start = max(t - kv_len, 0) if kv_len <= t else 0
            query_pos = torch.arange(t - q_len, t, device=dev)
            query_image = self.image_mask[:, t - q_len :]
            first = self.first_image()
            self._cache[key] = {
                "query_pos": query_pos,
                "query_image": query_image,
                "key_pos": torch.arange(start, start + kv_len, device=dev),
                "image_keys": self.to_key_slots(self.image_mask, kv_len),
                "first_image": first,
                "text_after_image": (~query_image) & (query_pos[None, :] > first[:, None]),
            }
        return self._cache[key]

    def all_have_image(self) -> bool:
        """Whether every sample of the batch holds an image token (one host sync per call, then cached)."""
        if "all_have_image" not in self._cache:
            self._cache["all_have_image"] = bool((self.first_image() < self.seq_len).all())
        return self._cache["all_have_image"]

    def extend(self, new_mask: torch.Tensor) -> None:
        """Append the image flags of the tokens a continuation forward feeds (decode steps: all False)."""
        self.image_mask = torch.cat([self.image_mask, new_mask.to(self.image_mask.device)], dim=1)
        self.prefill = False
        kept = {k: self._cache[k] for k in ("first_image", "all_have_image") if k in self._cache}
        self._cache.clear()
        if not bool(new_mask.any()):
            self._cache.update(kept)  # decode tokens are text: the first image does not move


@dataclass
class LayerView:
    """What one attention call knows: its layer, the call's state, and this forward's tensors (shared by its layers)."""

    layer_idx: int
    call: CallState
    parts: dict[Any, Any]  # CallState.view_parts(q_len, kv_len), plus what `shared` adds during the forward
    value: torch.Tensor | None = None  # (B, Hkv, K, D) value states of this layer's call (ONLY reads them)
    masked: bool = True  # whether the scores handed to the edits carry an additive mask (False: every key is seen)

    prefill = property(lambda self: self.call.prefill)
    query_pos = property(lambda self: self.parts["query_pos"])  # (Q,) absolute positions of the query rows
    query_image = property(lambda self: self.parts["query_image"])  # (B, Q) bool: query rows that are image tokens
    key_pos = property(lambda self: self.parts["key_pos"])  # (K,) absolute positions of the key slots
    image_keys = property(lambda self: self.parts["image_keys"])  # (B, K) bool: key slots holding image tokens

    def text_rows_after_image(self) -> torch.Tensor:
        """(B, Q) bool: non-image query rows that come after the sample's first image token."""
        return self.parts["text_after_image"]

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        """`make()` once per forward under `key`, then the same value in every layer. A method keys its entries
        with itself (`(self, "gain")`) so that two instances never share them."""
        value = self.parts.get(key)
        if value is None:
            value = self.parts[key] = make()
        return value


def last_row(view: LayerView) -> torch.Tensor:
    """(B, Q) bool: the last query row (the one that predicts the next token) of samples with an image; made once
    per forward and shared by its layers (PAI, PAINT, ONLY and the capture passes edit or read that row)."""

    def make() -> torch.Tensor:
        rows = torch.zeros_like(view.query_image)
        rows[:, -1] = True
        return rows & (view.parts["first_image"] < view.call.seq_len)[:, None]

    return view.shared("last_row", make)


@dataclass
class RowSet:
    """The query rows gathered for explicit recomputation, padded per sample to the same count R."""

    index: torch.Tensor  # (B, R) long: query index inside this forward (padding repeats a valid index)
    valid: torch.Tensor  # (B, R) bool: False on padding
    own: torch.Tensor  # (B, R) bool: the rows the method being called asked for (subset of valid)


class Tally:
    """Per-layer counts for reports that cost no tensor op on the hot path.

    `add` keeps the flag tensor (a few bytes per head and row); the counting happens when a report is read.
    """

    COMPACT_EVERY = 64  # fold the kept tensors into one count now and then: long generations stay small

    def __init__(self, num_layers: int):
        self._parts: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def add(self, layer: int, flags: torch.Tensor) -> None:
        parts = self._parts[layer]
        parts.append(flags)
        if len(parts) >= self.COMPACT_EVERY:
            parts[:] = [self._total(parts).reshape(1)]

    @staticmethod
    def _total(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1).long() for t in parts]).sum()

    def per_layer(self) -> list[int]:
        """Number of True (or the sum of the values) per layer."""
        return [int(self._total(parts)) if parts else 0 for parts in self._parts]


class AttentionMethod:
    """Base class of the attention methods the engine runs. Override only what the method needs.

    Per-call data goes into `call.store[self]` / `call.report[self]` (keyed by the instance, so two methods of one
    class never share it). The engine hooks the decoder layers only for methods that override `observe_layer_input`.
    """

    name: str = "method"

    def bind(self, model: "nn.Module", adapter: "FamilyAdapter", num_layers: int) -> None:
        """Resolve model-dependent defaults (layer range, sink dims...) once, at `apply` time."""

    def unbind(self) -> None:
        """Undo what `bind` attached to the model (extra hooks); called by the engine on `remove`."""

    def observe_layer_input(self, call: CallState, layer_idx: int, hidden: torch.Tensor) -> None:
        """See the hidden state (B, Q, D) of this forward's Q new tokens entering decoder layer `layer_idx`."""

    def rows(self, view: LayerView) -> torch.Tensor | None:
        """(B, Q) bool of query rows to edit in this call, or None when the method does nothing here (fast path)."""
        return None

    def decode_rows_cover_all(self, view: LayerView) -> bool:
        """At a decode step, whether `rows` asks for every sample's row (then SDPA is skipped); no per-step sync."""
        return False

    def edit_logits(self, view: LayerView, rows: RowSet, scores: torch.Tensor) -> Edit | None:
        """Edit pre-softmax scores (B, H, R, K) fp32; return (scores, changed (B, H, R) bool) or None."""
        return None

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> Edit | None:
        """Edit post-softmax probabilities (B, H, R, K) fp32; return (probs, changed (B, H, R) bool) or None."""
        return None

    def summary(self, call: CallState) -> dict[str, Any]:
        """What the method did in the last call, as plain data for `handle.report()`."""
        return {}
