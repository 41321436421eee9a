"""PAINT's formulas: the dual-stream token selection (local, spatial, summary), the merge of patch scores into
merged tokens, and the amplification of the selected key columns. Pure tensor math, no model."""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..config import check_bool as _check_bool, check_nonneg as _check_nonneg
from ..pai import _check_logits_4d, _coef_4d, _columns_4d, amplify_with_gain
from .config import PatchOrder, SummaryRounding, _check_ratio, _check_rounding

logger = logging.getLogger(__name__)


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
