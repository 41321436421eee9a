"""The small interface between the engine and the methods.

The engine knows no method: for every attention call it asks each method which query rows it wants to edit,
gathers those rows once, and hands the pre-softmax scores and then the post-softmax probabilities to each method in
order (SPEC §6: logit edits -> softmax -> probability edits). A method answers with the (batch, head, row) cells it
changed; every other head and row keeps the fast SDPA output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..patches.base import FamilyAdapter


@dataclass
class CallState:
    """Everything one `generate` (or one stand-alone forward) accumulates. Reset when the KV cache is empty."""

    image_mask: torch.Tensor  # (B, T) bool: which absolute positions seen so far are image tokens
    prefill: bool = True  # whether the forward now running started from an empty cache
    store: dict[str, Any] = field(default_factory=dict)  # per-method scratch data (e.g. VAR's sinks per layer)
    report: dict[str, Any] = field(default_factory=dict)  # what the methods did, for `handle.report()`
    _views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.image_mask.shape[1]

    def first_image(self) -> torch.Tensor:
        """(B,) position of the first image token per sample; `seq_len` (never reached) when there is none."""
        mask = self.image_mask
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        big = torch.full_like(pos, mask.shape[1])
        return torch.where(mask, pos, big).min(dim=1).values

    def key_view(self, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Map key slots to absolute positions: (positions (K,), image flag per slot (B, K)).

        A dynamic cache holds the last `kv_len` positions; a static cache is longer than the sequence and slot j is
        position j (slots past the sequence are empty and masked by the caller's mask).
        """
        key = (kv_len, self.seq_len)
        if key not in self._views:
            t, dev = self.seq_len, self.image_mask.device
            if kv_len <= t:
                pos = torch.arange(t - kv_len, t, device=dev)
                img = self.image_mask[:, t - kv_len :]
            else:
                pos = torch.arange(kv_len, device=dev)
                img = torch.nn.functional.pad(self.image_mask, (0, kv_len - t), value=False)
            self._views[key] = (pos, img)
        return self._views[key]

    def extend(self, new_mask: torch.Tensor) -> None:
        """Append the image flags of the tokens a continuation forward feeds (decode steps: all False)."""
        self.image_mask = torch.cat([self.image_mask, new_mask.to(self.image_mask.device)], dim=1)
        self.prefill = False
        self._views.clear()


@dataclass
class LayerView:
    """What one attention call knows about its query rows and key slots."""

    layer_idx: int
    num_layers: int
    call: CallState
    query_pos: torch.Tensor  # (Q,) absolute positions of the query rows of this forward
    query_image: torch.Tensor  # (B, Q) bool
    key_pos: torch.Tensor  # (K,) absolute positions of the key slots
    image_keys: torch.Tensor  # (B, K) bool
    first_image: torch.Tensor  # (B,)

    @property
    def prefill(self) -> bool:
        return self.call.prefill

    def text_rows_after_image(self) -> torch.Tensor:
        """(B, Q) bool: non-image query rows that come after the sample's first image token."""
        return (~self.query_image) & (self.query_pos[None, :] > self.first_image[:, None])

    def last_row(self) -> torch.Tensor:
        """(B, Q) bool: the last query row of this forward (the row that predicts the next token)."""
        rows = torch.zeros_like(self.query_image)
        rows[:, -1] = True
        return rows & (self.first_image < self.call.seq_len)[:, None]


@dataclass
class RowSet:
    """The query rows gathered for explicit recomputation, padded per sample to the same count R."""

    index: torch.Tensor  # (B, R) long: query index inside this forward (padding repeats a valid index)
    valid: torch.Tensor  # (B, R) bool: False on padding
    positions: torch.Tensor  # (B, R) long: absolute positions
    own: torch.Tensor  # (B, R) bool: the rows the method being called asked for (subset of valid)


class AttentionMethod:
    """Base class of the attention methods the engine runs. Override only what the method needs.

    - `bind` resolves model-dependent defaults once, at `apply` time.
    - `observe_layer_input` sees the hidden state entering each decoder layer at prefill (only when
      `wants_layer_inputs` is True: otherwise no layer hook is installed).
    - `rows` says which query rows of this attention call the method edits; None means none (the fast path).
    - `edit_logits` / `edit_probs` edit the gathered (B, H, R, K) fp32 tensor and return it with the (B, H, R)
      cells they changed.
    """

    name: str = "method"
    wants_layer_inputs: bool = False

    def bind(self, model: "nn.Module", adapter: "FamilyAdapter", num_layers: int) -> None:
        """Resolve defaults that depend on the model (layer range, sink dims...)."""

    def observe_layer_input(self, call: CallState, layer_idx: int, hidden: torch.Tensor) -> None:
        """See the hidden state (B, T, D) entering decoder layer `layer_idx` during a prefill forward."""

    def rows(self, view: LayerView) -> torch.Tensor | None:
        """(B, Q) bool of query rows to edit in this call, or None when the method does nothing here."""
        return None

    def edit_logits(
        self, view: LayerView, rows: RowSet, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Edit pre-softmax scores (B, H, R, K); return (scores, changed (B, H, R)) or None."""
        return None

    def edit_probs(
        self, view: LayerView, rows: RowSet, probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Edit post-softmax probabilities (B, H, R, K); return (probs, changed (B, H, R)) or None."""
        return None

    def summary(self, call: CallState) -> dict[str, Any]:
        """What the method did in the last call, as plain data for reports."""
        return call.report.get(self.name, {})
