"""PAINT: amplify informative image tokens, damp summary tokens (arXiv 2501.12206).

Configuration, pure tensor math and the engine plug (`PAINTMethod`); no model family (the vision encoder's
hooks come from the family adapter's `paint_capture`). SPEC section 4:

* Token selection, once per image, from the vision encoder's own attention:
  - local stream: CLS -> patch attention of the first vision layer, summed over heads; top ``local_ratio``;
  - spatial stream: column mean (over heads and query rows) of the first vision layer; top ``spatial_ratio``;
  - summary tokens S: IQR outliers of CLS -> patch attention, summed over heads, at the feature layer;
  - local set L = (local ∪ spatial) \\ S.
* Amplification, pre-softmax, on the last query row of layers 2..L-1:
  ``z_j += alpha * |z_j|`` for j in L, ``z_j += beta * |z_j|`` for j in S.

Decisions where the paper or code leaves room (all documented on the functions):

* A ratio keeps ``floor(ratio * P)`` tokens (the official code's ``int(P * ratio)``: 144 and 28 of 576 for
  0.25 and 0.05), with a 1e-9 guard against float noise; ties go to the lower index.
* Quartiles use ``torch.quantile``'s linear interpolation (numpy's default percentile, which the official
  code uses). Outliers are strictly above ``Q3 + k * IQR``.
* Summary tokens: every IQR outlier (the paper's rule, ``summary_rounding="paper"``). The official code turns the
  outliers into a share ``c / n`` and keeps the top ``int(n * (c / n))`` scores, which float rounding makes ``c - 1``
  for some counts at n = 49, 100, 196, 729 (never at 576 = LLaVA-1.5's grid); ``summary_rounding="official"``
  reproduces that (the top-scored outliers are kept, the lowest-scored one dropped).
* Encoders without CLS (SigLIP, Qwen-VL ViT) use the column-mean score for both streams and for the
  summary score at the feature layer (ours).
* Merged grids (Qwen 2x2): scores are summed inside each merged token before any ranking or quartile.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from ...engine.method import AttentionMethod, CallState, LayerView, RowSet, Tally
from ..registry import register_method

from ..heads import HeadSensitivity, head_factors
from ..pai import (
    _check_bool,
    _check_nonneg,
    _check_open_closed_unit,
    _check_logits_4d,
    _check_real,
    _coef_4d,
    _columns_4d,
    amplify_with_gain,
    resolve_layers,
    validate_layers,
)

__all__ = [
    "COLLAPSE_ALPHA",
    "PAINTConfig",
    "PAINTMethod",
    "select_from_scores",
    "PatchOrder",
    "TokenSelection",
    "column_mean_scores",
    "local_stream",
    "merge_scores",
    "official_summary_count",
    "paint_logit_edit",
    "select_tokens",
    "selection_to_columns",
    "spatial_stream",
    "summary_tokens",
    "top_ratio",
]

logger = logging.getLogger(__name__)

#: PAINT reports that alpha = 0.8 collapses generation (captions average 41 tokens); from here on we warn.
COLLAPSE_ALPHA: float = 0.8

PatchOrder = Literal["raster", "merge_grouped"]
SummaryRounding = Literal["paper", "official"]
SUMMARY_ROUNDINGS: tuple[str, ...] = ("paper", "official")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _check_ratio(name: str, value: Any) -> float:
    """Finite real in ``[0, 1]``."""
    v = _check_real(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _check_rounding(value: Any) -> str:
    if value not in SUMMARY_ROUNDINGS:
        raise ValueError(f"summary_rounding must be one of {', '.join(map(repr, SUMMARY_ROUNDINGS))}, got {value!r}")
    return value


@dataclass(frozen=True)
class PAINTConfig:
    """Settings of PAINT (SPEC section 4). Validated on construction; ValueError names the field.

    Attributes:
        alpha: amplification of the local (informative) set L, ``>= 0``; a warning is logged from 0.8 on,
            where the paper reports collapsed generation (41-token captions on average).
        beta: amplification of the summary set S, ``>= 0``.
        local_ratio: fraction of patches kept by the local stream, in ``[0, 1]``.
        spatial_ratio: fraction of patches kept by the spatial stream, in ``[0, 1]``.
        iqr_k: IQR multiplier of the summary-token outlier rule, ``>= 0``.
        summary_rounding: ``"paper"`` keeps every IQR outlier; ``"official"`` keeps the official code's
            ``int(n * (outliers / n))`` of them (one fewer for some counts, see :func:`summary_tokens`).
        guidance: run PAI's image-free logits guidance beside the attention edit.
        gamma: guidance strength, ``>= 0`` (1 = no guidance effect).
        cutoff: guidance plausibility cut-off, in ``(0, 1]``.
        layers: decoder layers to steer (0-based); ``None`` = ``2 .. L-1``.
        head_sensitivity: per-head modulation (ours): a :class:`HeadSensitivity`, the path of its JSON, or
            None for one ``alpha`` for every head.
        kappa: sharpness of the head modulation, ``>= 0``.
        head_top_fraction: keep only this fraction of the most sensitive heads, in ``(0, 1]``, or None.
    """

    alpha: float = 0.7
    beta: float = 0.4
    local_ratio: float = 0.25
    spatial_ratio: float = 0.05
    iqr_k: float = 1.5
    summary_rounding: SummaryRounding = "paper"
    guidance: bool = True
    gamma: float = 1.1
    cutoff: float = 0.1
    layers: tuple[int, ...] | None = None
    head_sensitivity: str | os.PathLike[str] | HeadSensitivity | None = None
    kappa: float = 1.0
    head_top_fraction: float | None = None
    name: str = field(default="paint", init=False, repr=False)  # registry / CLI key

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "alpha", _check_nonneg("alpha", self.alpha))
        set_(self, "beta", _check_nonneg("beta", self.beta))
        set_(self, "local_ratio", _check_ratio("local_ratio", self.local_ratio))
        set_(self, "spatial_ratio", _check_ratio("spatial_ratio", self.spatial_ratio))
        set_(self, "iqr_k", _check_nonneg("iqr_k", self.iqr_k))
        _check_rounding(self.summary_rounding)
        _check_bool("guidance", self.guidance)
        set_(self, "gamma", _check_nonneg("gamma", self.gamma))
        set_(self, "cutoff", _check_open_closed_unit("cutoff", self.cutoff))
        set_(self, "layers", validate_layers("layers", self.layers))
        hs = self.head_sensitivity
        if hs is not None and not isinstance(hs, (str, os.PathLike, HeadSensitivity)):
            raise ValueError(
                f"head_sensitivity must be a HeadSensitivity, a path to its JSON, or None, got {type(hs).__name__}"
            )
        set_(self, "kappa", _check_nonneg("kappa", self.kappa))
        if self.head_top_fraction is not None:
            set_(self, "head_top_fraction", _check_open_closed_unit("head_top_fraction", self.head_top_fraction))
        if self.alpha >= COLLAPSE_ALPHA:
            logger.warning(
                "PAINT alpha=%.3g >= %.1f: the paper reports collapsed generation at alpha 0.8 "
                "(captions average 41 tokens); 0.7 is its best setting",
                self.alpha,
                COLLAPSE_ALPHA,
            )
        if hs is None and (self.kappa != 1.0 or self.head_top_fraction is not None):
            logger.warning("PAINT kappa / head_top_fraction have no effect without head_sensitivity")

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """The decoder layers this config steers in a model with ``num_layers`` layers."""
        return resolve_layers(self.layers, num_layers)

    def load_head_sensitivity(self) -> HeadSensitivity | None:
        """The head sensitivity object, reading the JSON when a path was given; None when unset."""
        hs = self.head_sensitivity
        if hs is None or isinstance(hs, HeadSensitivity):
            return hs
        return HeadSensitivity.load(hs)

    def head_alphas(self, model_config: Any) -> Tensor | None:
        """Per-head local-set factors ``alpha[l, h]`` (L, H) float32 for ``model_config``, or None.

        None means no head modulation: use the scalar ``alpha``. Otherwise the stored sensitivity is checked
        against the model (ValueError naming both models on mismatch) and turned into
        ``alpha * (s / max s) ** kappa`` with the maximum and the top-fraction ranking taken over the steered
        layers; other layers are 0. ``beta`` is not modulated (the spec defines the factor for alpha only).
        """
        hs = self.load_head_sensitivity()
        if hs is None:
            return None
        hs.check_compatible(model_config)
        layers = self.resolve_layers(hs.num_layers)
        return hs.factors(self.alpha, self.kappa, self.head_top_fraction, layers=layers).to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Token selection
# --------------------------------------------------------------------------------------------------


class TokenSelection(NamedTuple):
    """Image tokens PAINT edits, as sorted int64 indices into the (merged) image-token sequence.

    Index 0 is the first non-CLS patch (or the first merged token). ``local`` and ``summary`` are disjoint.
    """

    local: Tensor
    summary: Tensor


def _count(ratio: float, n: int) -> int:
    """``floor(ratio * n)`` (the official ``int(n * ratio)``), robust to float noise (0.29 * 100 -> 29)."""
    return max(0, min(n, math.floor(ratio * n + 1e-9)))


def top_ratio(scores: Tensor, ratio: float) -> Tensor:
    """Indices of the ``floor(ratio * P)`` largest of ``scores`` (P,), sorted ascending (int64).

    Ties are broken towards the lower index (stable sort), so the result is deterministic.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape (P,), got {tuple(scores.shape)}")
    k = _count(_check_ratio("ratio", ratio), scores.shape[0])
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def _check_attn(name: str, attn: Tensor, has_cls: bool) -> None:
    if attn.dim() != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"{name} must have shape (heads, N, N), got {tuple(attn.shape)}")
    if attn.shape[2] <= int(has_cls):
        raise ValueError(f"{name} holds no patch tokens: N={attn.shape[2]}, has_cls={has_cls}")


def _cls_scores(attn: Tensor) -> Tensor:
    """CLS (row 0) -> patch attention summed over heads, CLS column dropped: (P,)."""
    return attn[:, 0, 1:].sum(dim=0)


def column_mean_scores(attn: Tensor, has_cls: bool) -> Tensor:
    """Attention each patch receives: mean over heads and all query rows (CLS row included).

    Args:
        attn: (heads, N, N) post-softmax attention over all tokens of one image, CLS at index 0 when
            ``has_cls``.
        has_cls: drop the CLS column so that index 0 is the first patch.

    Returns:
        (P,) float scores, P = N - has_cls. (The official code sums rows of the softmax, which are all 1,
        and is off by one with CLS; this is the evident intent.)
    """
    _check_attn("attn", attn, has_cls)
    col = attn.mean(dim=(0, 1))
    return col[1:] if has_cls else col


def local_stream(cls_attn: Tensor, ratio: float) -> Tensor:
    """Local (informative) stream: top ``floor(ratio * P)`` patches by CLS attention summed over heads.

    Args:
        cls_attn: (heads, P) CLS -> patch attention of the first vision layer (CLS column already removed).
        ratio: in [0, 1].

    Returns:
        Sorted int64 patch indices.
    """
    if cls_attn.dim() != 2:
        raise ValueError(f"cls_attn must have shape (heads, P), got {tuple(cls_attn.shape)}")
    return top_ratio(cls_attn.sum(dim=0), ratio)


def spatial_stream(attn: Tensor, ratio: float, has_cls: bool) -> Tensor:
    """Spatial stream: top ``floor(ratio * P)`` patches by :func:`column_mean_scores` of ``attn``.

    Args:
        attn: (heads, N, N) first-layer attention over all tokens, CLS at index 0 when ``has_cls``.
        ratio: in [0, 1].
        has_cls: whether index 0 is CLS; returned indices count patches from 0 either way.

    Returns:
        Sorted int64 patch indices.
    """
    return top_ratio(column_mean_scores(attn, has_cls), ratio)


def official_summary_count(outliers: int, n: int) -> int:
    """How many summary tokens the official code keeps out of ``outliers`` IQR outliers among ``n`` scores.

    It computes the share ``outliers / n`` and then ``int(n * share)`` in float64; the product can land just below
    the integer (49 * (1 / 49) = 0.999...), and ``int`` truncates it: one outlier fewer.
    """
    return int(n * (outliers / n))


def summary_tokens(scores: Tensor, k: float = 1.5, rounding: SummaryRounding = "paper") -> Tensor:
    """Summary tokens: IQR outliers, ``scores > Q3 + k * (Q3 - Q1)``.

    Quartiles are ``torch.quantile`` with linear interpolation (numpy's default percentile), computed in
    float64. Uniform scores give IQR 0 and no outliers.

    Args:
        scores: (P,) per-patch scores.
        k: IQR multiplier, >= 0.
        rounding: ``"paper"`` returns every outlier. ``"official"`` returns the
            :func:`official_summary_count` highest-scored of them (ties to the lower index), as the official
            code's ``topk(scores, int(n * share))`` does.

    Returns:
        Sorted int64 indices.
    """
    if scores.dim() != 1 or scores.shape[0] == 0:
        raise ValueError(f"scores must have shape (P,) with P >= 1, got {tuple(scores.shape)}")
    k = _check_nonneg("k", k)
    _check_rounding(rounding)
    s = scores.to(torch.float64)
    q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=torch.float64, device=s.device))
    outliers = torch.nonzero(s > q3 + k * (q3 - q1)).flatten()
    if rounding == "paper":
        return outliers
    keep = official_summary_count(int(outliers.numel()), int(s.shape[0]))
    top = outliers[torch.sort(s[outliers], descending=True, stable=True).indices[:keep]]
    return torch.sort(top).values


def merge_scores(
    scores: Tensor,
    merge: int = 1,
    grid: tuple[int, int] | None = None,
    patch_order: PatchOrder = "raster",
) -> Tensor:
    """Sum patch scores inside each merged token (e.g. Qwen-VL's 2x2 patch merger).

    Args:
        scores: (P,) per-patch scores.
        merge: side of the merge window (1 = no merging).
        grid: (h, w) patch grid before merging. Required for ``"raster"`` order when ``merge > 1``;
            checked against P when given.
        patch_order: order of ``scores``. ``"raster"``: row-major over the (h, w) patch grid.
            ``"merge_grouped"``: every consecutive ``merge * merge`` block is one merged token, blocks in
            row-major order over the merged grid (Qwen2-VL's vision tower emits patches this way).

    Returns:
        (P / merge**2,) scores of the merged tokens, row-major over the merged (h/merge, w/merge) grid
        (in both orders, so indices match the LM's image tokens).
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape (P,), got {tuple(scores.shape)}")
    if isinstance(merge, bool) or not isinstance(merge, int) or merge < 1:
        raise ValueError(f"merge must be an int >= 1, got {merge!r}")
    if patch_order not in ("raster", "merge_grouped"):
        raise ValueError(f"patch_order must be 'raster' or 'merge_grouped', got {patch_order!r}")
    p = scores.shape[0]
    if grid is not None:
        h, w = grid
        if h * w != p:
            raise ValueError(f"grid {tuple(grid)} holds {h * w} patches but scores have {p}")
        if h % merge or w % merge:
            raise ValueError(f"grid {tuple(grid)} is not divisible by merge={merge}")
    if merge == 1:
        return scores
    if patch_order == "merge_grouped":
        if p % (merge * merge):
            raise ValueError(f"{p} patches do not split into merge windows of {merge}x{merge}")
        return scores.reshape(-1, merge * merge).sum(dim=-1)
    if grid is None:
        raise ValueError("grid=(h, w) is required to merge scores in 'raster' order")
    h, w = grid
    return scores.reshape(h // merge, merge, w // merge, merge).sum(dim=(1, 3)).flatten()


def select_tokens(
    first_layer_attn: Tensor,
    feature_layer_attn: Tensor,
    has_cls: bool,
    local_ratio: float,
    spatial_ratio: float,
    iqr_k: float,
    merge: int = 1,
    grid: tuple[int, int] | None = None,
    patch_order: PatchOrder = "raster",
    summary_rounding: SummaryRounding = "paper",
) -> TokenSelection:
    """PAINT's dual-stream selection for one image: L = (local ∪ spatial) \\ S and S.

    Args:
        first_layer_attn: (heads, N, N) post-softmax attention of the first vision layer.
        feature_layer_attn: (heads, N, N) attention of the feature layer (the one the projector reads,
            -2 for LLaVA). Both over all tokens of the image, CLS at index 0 when ``has_cls``.
        has_cls: with CLS the local and summary scores are CLS -> patch attention summed over heads;
            without CLS (SigLIP, Qwen-VL) both are :func:`column_mean_scores` of the respective layer (ours).
        local_ratio, spatial_ratio: fractions kept by the two streams (``floor(ratio * P)`` tokens).
        iqr_k: summary-token IQR multiplier.
        merge, grid, patch_order: see :func:`merge_scores`; all three scores are summed inside each merged
            token before ranking, and ratios count merged tokens.
        summary_rounding: see :func:`summary_tokens`.

    Returns:
        :class:`TokenSelection` of sorted int64 indices into the (merged) token sequence, row-major.
    """
    _check_bool("has_cls", has_cls)
    _check_attn("first_layer_attn", first_layer_attn, has_cls)
    _check_attn("feature_layer_attn", feature_layer_attn, has_cls)
    if first_layer_attn.shape[2] != feature_layer_attn.shape[2]:
        raise ValueError(
            f"first_layer_attn and feature_layer_attn cover different token counts: "
            f"{first_layer_attn.shape[2]} vs {feature_layer_attn.shape[2]}"
        )
    spatial_score = column_mean_scores(first_layer_attn, has_cls)
    if has_cls:
        local_score = _cls_scores(first_layer_attn)
        summary_score = _cls_scores(feature_layer_attn)
    else:
        local_score = spatial_score
        summary_score = column_mean_scores(feature_layer_attn, has_cls)

    def merged(s: Tensor) -> Tensor:
        return merge_scores(s, merge, grid, patch_order)

    return select_from_scores(
        merged(local_score), merged(spatial_score), merged(summary_score), local_ratio, spatial_ratio, iqr_k,
        summary_rounding,
    )


def select_from_scores(
    local_score: Tensor,
    spatial_score: Tensor,
    summary_score: Tensor,
    local_ratio: float,
    spatial_ratio: float,
    iqr_k: float,
    summary_rounding: SummaryRounding = "paper",
) -> TokenSelection:
    """The selection from per-token scores already reduced from the attention maps (and merged).

    The engine plug gets scores, not maps, from the vision hooks (no (heads, N, N) tensor is kept):
    S = IQR outliers of ``summary_score``; L = (top ``local_ratio`` of ``local_score`` ∪ top ``spatial_ratio``
    of ``spatial_score``) \\ S. All three are (P,) over the same tokens.
    """
    if not local_score.shape == spatial_score.shape == summary_score.shape or local_score.dim() != 1:
        raise ValueError(
            f"scores must share one (P,) shape, got {tuple(local_score.shape)}, {tuple(spatial_score.shape)}, "
            f"{tuple(summary_score.shape)}"
        )
    summary = summary_tokens(summary_score, iqr_k, summary_rounding)
    streams = torch.cat([top_ratio(local_score, local_ratio), top_ratio(spatial_score, spatial_ratio)])
    union = torch.unique(streams)  # sorted
    local = union[~torch.isin(union, summary)]
    return TokenSelection(local=local, summary=summary)


def selection_to_columns(
    selection: TokenSelection, image_positions: Tensor, num_keys: int
) -> tuple[Tensor, Tensor]:
    """Boolean key masks for one sample from a selection and the LM positions of the image tokens.

    Args:
        selection: indices into the image-token sequence.
        image_positions: (T,) int64 key positions of the image tokens in the LM sequence, in the order the
            selection indexes (for LLaVA: one token per patch, in order).
        num_keys: K, the key length.

    Returns:
        ``(local_cols, summary_cols)``, bool (K,) each, on the device of ``image_positions``.
    """
    if image_positions.dim() != 1:
        raise ValueError(f"image_positions must have shape (T,), got {tuple(image_positions.shape)}")
    t = image_positions.shape[0]
    out = []
    for name, idx in (("local", selection.local), ("summary", selection.summary)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t):
            raise ValueError(f"selection.{name} indexes past the {t} image tokens")
        cols = torch.zeros(num_keys, dtype=torch.bool, device=image_positions.device)
        pos = image_positions[idx.to(image_positions.device)]
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= num_keys):
            raise ValueError(f"image positions of selection.{name} fall outside the {num_keys} keys")
        cols[pos] = True
        out.append(cols)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# Logit edit
# --------------------------------------------------------------------------------------------------


def paint_logit_edit(
    z: Tensor,
    local_cols: Tensor,
    summary_cols: Tensor,
    alpha: float | Tensor,
    beta: float | Tensor,
) -> Tensor:
    """PAINT amplification: ``z + alpha * |z|`` on L, ``z + beta * |z|`` on S, ``z`` elsewhere (out of place).

    Args:
        z: pre-softmax scores (B, H, R, K) including the additive mask.
        local_cols, summary_cols: bool (B, K) or (B, R, K). A key in both is treated as summary
            (L excludes S by definition).
        alpha, beta: scalar, per-head (H,) or (B, H) factors (alpha per head for head modulation).

    Returns:
        New tensor like ``z``; masked keys (``<= finfo.min / 2``) are untouched, as in
        :func:`vlm_attn.methods.pai.amplify_logits`.
    """
    _check_logits_4d(z)
    return amplify_with_gain(z, paint_gain(z, local_cols, summary_cols, alpha, beta))


def paint_gain(
    z: Tensor, local_cols: Tensor, summary_cols: Tensor, alpha: float | Tensor, beta: float | Tensor
) -> Tensor:
    """Per-key amplification factor broadcastable to z: alpha on L \\ S, beta on S, 0 elsewhere."""
    summ = _columns_4d(summary_cols, z)
    loc = _columns_4d(local_cols, z) & ~summ
    return (loc * _coef_4d(alpha, z, "alpha") + summ * _coef_4d(beta, z, "beta")).to(z.dtype)


# --------------------------------------------------------------------------------------------------
# Engine plug
# --------------------------------------------------------------------------------------------------


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
        runs = _image_runs(call.image_mask)
        n_runs = sum(len(r) for r in runs)
        if n_runs == 0:
            return None
        first, feature = pending.get("first"), pending.get("feature")
        if first is not None and feature is not None:  # family-specific: several encoder entries per run
            lengths = [int(run.numel()) for sample_runs in runs for run in sample_runs]
            first = self.adapter.paint_group_scores(lengths, first)
            feature = self.adapter.paint_group_scores(lengths, feature)
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

    def rows(self, view: LayerView) -> Tensor | None:
        if view.layer_idx not in self.layers or not self._active():
            return None
        if self._columns(view) is None:
            return None
        return view.last_row()

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
        out = amplify_with_gain(scores, gain)
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
