"""PAINTMethod: the engine plug. The family adapter's vision hooks report scores; the selection turns them into
key columns per image; the last query row of the steered layers is amplified there."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ...engine.method import AttentionMethod, CallState, LayerView, RowSet, Tally, last_row
from ..registry import register_method
from ..pai import amplify_with_gain
from .config import PAINTConfig
from .selection import paint_gain, select_from_scores

logger = logging.getLogger(__name__)


def _image_runs(mask: Tensor) -> list[list[Tensor]]:
    """Per sample, the position tensors of each contiguous run of image tokens (one run per image)."""
    runs: list[list[Tensor]] = []
    for row in mask:
        pos = torch.nonzero(row).flatten()
        if pos.numel() == 0:
            runs.append([])
            continue
        breaks = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1
        runs.append(list(torch.tensor_split(pos, breaks.cpu())))
    return runs


@register_method(PAINTConfig)
class PAINTMethod(AttentionMethod):
    """PAINT in the engine: vision hooks pick L and S per image, the last query row is amplified in each layer.

    The family adapter's ``paint_capture`` hooks report per-image scores of the first and the feature vision layer
    at each vision forward. Inside ``generate`` the pixels are encoded before the prefill forward (whose top-model
    hook starts a new call), so the scores wait on this method (one instance per model and ``apply``) and are turned
    into key columns at the call's first steered attention, then kept in the call's store for the decode steps.
    Images map to the runs of consecutive image tokens of each sample, samples in batch order.
    """

    def __init__(self, config: PAINTConfig):
        self.config = config
        self.name = config.name
        self.layers: frozenset[int] = frozenset()
        self._pending: dict[str, list[Any]] = {}
        self._used: dict[str, list[Any]] = {}  # the scores the latest call was built from (a replayed call reuses)
        self._removables: list[Any] = []
        self._head_alpha: Tensor | None = None
        self.adapter: Any = None

    def _active(self) -> bool:
        return self.config.alpha > 0 or self.config.beta > 0 or self._head_alpha is not None and bool(
            (self._head_alpha > 0).any()
        )

    def bind(self, model: Any, adapter: Any, num_layers: int) -> None:
        self.layers = frozenset(self.config.resolve_layers(num_layers))
        self.num_layers = num_layers
        self.adapter = adapter
        self._head_alpha = self.config.head_alphas(model.config)
        self._device_alpha: dict[Any, Tensor] = {}
        if self._active():
            self._removables = list(adapter.paint_capture(self._receive))

    def unbind(self) -> None:
        for item in self._removables:
            item.remove()
        self._removables.clear()
        self._pending.clear()
        self._used = {}

    def _receive(self, kind: str, scores: list[Any]) -> None:
        if kind == "first":  # a new vision forward: earlier, unconsumed scores are stale
            self._pending = {}
        self._pending[kind] = scores

    # --- selection -> per-position columns, once per call
    def _columns(self, view: LayerView) -> tuple[Tensor, Tensor] | None:
        store = view.call.store
        if self not in store:
            store[self] = self._build(view.call) if view.prefill else None
        return store[self]

    def _build(self, call: CallState) -> tuple[Tensor, Tensor] | None:
        pending, self._pending = self._pending, {}
        if not pending and call.replay:  # the same prompts again, their images not encoded again
            pending = self._used
        self._used = pending
        runs = _image_runs(call.image_mask)
        n_runs = sum(len(r) for r in runs)
        if n_runs == 0:
            return None
        first, feature = pending.get("first"), pending.get("feature")
        if first is not None and feature is not None:
            first, feature = self._per_run(runs, call.image_mask, first, feature)
        if first is None or feature is None or len(first) != n_runs or len(feature) != n_runs:
            logger.warning(
                "PAINT: the prompt holds %d image(s) but the vision hooks scored %s; PAINT is inactive for this call "
                "(pass pixel_values with the prompt; videos and precomputed image features are not supported)",
                n_runs,
                "none" if first is None else len(first),
            )
            return None
        cfg = self.config
        local = torch.zeros_like(call.image_mask)
        summary = torch.zeros_like(call.image_mask)
        i = 0
        kept = {"local": 0, "summary": 0}
        for b, sample_runs in enumerate(runs):
            for run in sample_runs:
                f, g = first[i], feature[i]
                i += 1
                spatial = f.column
                local_score = f.cls if f.cls is not None else spatial
                summary_score = g.cls if g.cls is not None else g.column
                sel = select_from_scores(local_score, spatial, summary_score, cfg.local_ratio, cfg.spatial_ratio,
                                         cfg.iqr_k, cfg.summary_rounding)
                pos = self.adapter.paint_image_positions(run.to(call.image_mask.device), spatial.shape[0])
                local[b, pos[sel.local.to(pos.device)]] = True
                summary[b, pos[sel.summary.to(pos.device)]] = True
                kept["local"] += int(sel.local.numel())
                kept["summary"] += int(sel.summary.numel())
        call.report[self] = {
            "images": n_runs, "local_tokens": kept["local"], "summary_tokens": kept["summary"],
            "rows": Tally(self.num_layers),
        }
        return local, summary

    def _per_run(self, runs: list[list[Tensor]], mask: Tensor, first: list[Any], feature: list[Any]
                 ) -> tuple[list[Any], list[Any]]:
        """The vision scores of every image run of every row, in batch order.

        Family-specific: several encoder entries may make one run (`paint_group_scores`). Beam search expands each
        prompt into k identical consecutive rows after the vision tower scored its images once: then the scores of
        each group's first row serve all k rows.
        """
        def grouped(rows: list[list[Tensor]], scores: list[Any]) -> list[Any]:
            return self.adapter.paint_group_scores([int(run.numel()) for r in rows for run in r], scores)

        n_runs = sum(len(r) for r in runs)
        one, two = grouped(runs, first), grouped(runs, feature)
        if len(one) == n_runs or len(runs) < 2:
            return one, two
        for k in range(2, len(runs) + 1):
            if len(runs) % k or not all(torch.equal(mask[i], mask[i - i % k]) for i in range(len(runs))):
                continue
            leaders = runs[::k]
            one, two = grouped(leaders, first), grouped(leaders, feature)
            if len(one) != sum(len(r) for r in leaders):
                continue
            out_one, out_two, i = [], [], 0
            for r in leaders:
                out_one += one[i : i + len(r)] * k
                out_two += two[i : i + len(r)] * k
                i += len(r)
            return out_one, out_two
        return one, two

    def rows(self, view: LayerView) -> Tensor | None:
        if view.layer_idx not in self.layers or not self._active():
            return None
        if self._columns(view) is None:
            return None
        return last_row(view)

    def decode_rows_cover_all(self, view: LayerView) -> bool:
        return view.call.all_have_image()  # the last row of every sample with an image

    def _alpha(self, layer: int, device: torch.device) -> float | Tensor:
        if self._head_alpha is None:
            return self.config.alpha
        key = (layer, device)
        if key not in self._device_alpha:
            self._device_alpha[key] = self._head_alpha[layer].to(device)
        return self._device_alpha[key]

    def edit_logits(self, view: LayerView, rows: RowSet, scores: Tensor) -> tuple[Tensor, Tensor]:
        k = scores.shape[-1]
        alpha = self._alpha(view.layer_idx, scores.device)

        def make_gain() -> Tensor:  # L and S as key slots, then the gain row: once per forward (per layer with heads)
            cols = view.shared((self, "cols"), lambda: [view.call.to_key_slots(c, k) for c in self._columns(view)])
            return paint_gain(scores, *cols, alpha, self.config.beta)

        gain = view.shared((self, "gain", view.layer_idx if isinstance(alpha, Tensor) else None), make_gain)
        out = amplify_with_gain(scores, gain, view.masked)
        b, h, r = scores.shape[0], scores.shape[1], rows.own.shape[1]
        changed = rows.own[:, None, :].expand(b, h, r)
        if isinstance(alpha, Tensor) and self.config.beta == 0:
            changed = changed & (alpha > 0)[None, :, None]
        view.call.report[self]["rows"].add(view.layer_idx, rows.own)
        return out, changed

    def summary(self, call: CallState) -> dict[str, Any]:
        data = call.report.get(self)
        if data is None:
            return {"active": False, "reason": "no image, alpha = beta = 0, or no vision scores"}
        per_layer = data["rows"].per_layer()
        rows = {i: per_layer[i] for i in sorted(self.layers)}
        return {
            "active": True, "alpha": self.config.alpha, "beta": self.config.beta,
            "head_modulation": self._head_alpha is not None, "images": data["images"],
            "local_tokens": data["local_tokens"], "summary_tokens": data["summary_tokens"], "rows_amplified": rows,
        }
