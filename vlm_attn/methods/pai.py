"""PAI: attention amplification on image keys plus image-free logits guidance (ECCV 2024).

This module holds the method's configuration, its pure tensor math and the few lines that plug the
amplification into the engine (`PAIMethod`); it knows no model family. The guidance pass lives in
:mod:`vlm_attn.passes.guidance`. SPEC section 3:

* Amplification, before softmax, in layers 2..L-1, all heads, the current last query row:
  ``z[q, j] <- z[q, j] + alpha * |z[q, j]|`` for every image key ``j``.
* Guidance, as a logits processor fed by a second, unsteered forward without the image:
  ``out = gamma * (logp_img - logp_noimg) + logp_noimg``; tokens whose image log-probability is below
  ``log(cutoff) + max(logp_img)`` are removed (set to ``-inf``).

The official code skips the first generated token because a flag starts in the wrong state; we apply
the method from the first generated token on (``PAIConfig.from_first_token`` accepts only ``True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..engine.method import AttentionMethod, CallState, LayerView, RowSet, Tally, last_row
from .config import (
    Bool, ConfigError, Custom, Layers, MethodConfig, Number, check_layers, check_nonneg, check_open_closed_unit, setting,
)
from .registry import register_method

__all__ = [
    "PAIConfig",
    "PAIMethod",
    "amplify_logits",
    "amplify_with_gain",
    "guided_logits",
    "resolve_layers",
    "validate_layers",
]


#: Kept for callers of the old name; the helper lives with the other checks in :mod:`vlm_attn.methods.config`.
validate_layers = check_layers


def resolve_layers(layers: tuple[int, ...] | None, num_layers: int, name: str = "layers") -> tuple[int, ...]:
    """Concrete decoder layers to steer for a model with ``num_layers`` layers.

    ``None`` means layers ``2 .. num_layers-1`` (0-based, both ends included: the official
    ``range(2, 32)`` for a 32-layer LLaVA). Explicit layers must lie in ``[0, num_layers)``.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if layers is None:
        return tuple(range(2, num_layers))
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ValueError(f"{name} {bad} out of range for a model with {num_layers} layers (allowed 0..{num_layers - 1})")
    return tuple(layers)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _first_token_only(name: str, value: Any) -> bool:
    if value is not True:
        raise ConfigError(
            f"{name} must be True (allowed: True only); skipping the first generated token reproduces a flag bug "
            f"of the official PAI code, got {value!r} ({type(value).__name__})"
        )
    return value


@dataclass(frozen=True)
class PAIConfig(MethodConfig):
    """Settings of PAI (SPEC section 3). Validated on construction; ConfigError names the class and field.

    Attributes:
        alpha: amplification of image-key logits, ``>= 0`` (0.2 for LLaVA-1.5).
        layers: decoder layers to steer (0-based); ``None`` = ``2 .. L-1``, see :meth:`resolve_layers`.
        guidance: run the image-free logits guidance beside the attention edit.
        gamma: guidance strength, ``>= 0``; ``gamma = 1`` returns the image log-probabilities (no effect).
        cutoff: plausibility cut-off in ``(0, 1]``: tokens with ``p_img < cutoff * max p_img`` are removed.
        from_first_token: steer from the first generated token on. Only ``True`` is accepted: the official
            code skips token 1 because a flag starts in the wrong state, a bug we do not reproduce.
    """

    name: ClassVar[str] = "pai"
    description: ClassVar[str] = "PAI: amplify image-key attention logits + image-free logits guidance (ECCV 2024)"

    alpha: float = setting(0.2, "amplification of image-key logits, z + alpha*|z| (0.2 for LLaVA-1.5)",
                           Number(low=0.0))
    layers: tuple[int, ...] | None = setting(None, "decoder layers to steer, e.g. 2,5 (default 2..L-1)", Layers())
    guidance: bool = setting(True, "run the image-free logits guidance beside the attention edit", Bool())
    gamma: float = setting(1.1, "guidance strength (1 = no effect)", Number(low=0.0))
    cutoff: float = setting(0.1, "guidance plausibility cut-off: tokens with p < cutoff * max p are removed",
                            Number(0.0, 1.0, low_open=True))
    from_first_token: bool = setting(True, "steer from the first generated token (only True is accepted)",
                                     Custom(_first_token_only, "True"), cli=False)

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """The decoder layers this config steers in a model with ``num_layers`` layers."""
        return resolve_layers(self.layers, num_layers)


# --------------------------------------------------------------------------------------------------
# Tensor math
# --------------------------------------------------------------------------------------------------


def _columns_4d(columns: Tensor, z: Tensor) -> Tensor:
    """Broadcast a (B, K) or (B, R, K) boolean key selection to (B, 1, R|1, K)."""
    if columns.dtype != torch.bool:
        raise ValueError(f"columns must be a bool tensor, got dtype {columns.dtype}")
    b, _, r, k = z.shape
    if columns.dim() == 2 and columns.shape == (b, k):
        return columns[:, None, None, :]
    if columns.dim() == 3 and columns.shape == (b, r, k):
        return columns[:, None, :, :]
    raise ValueError(f"columns must have shape (B, K)={(b, k)} or (B, R, K)={(b, r, k)}, got {tuple(columns.shape)}")


def _coef_4d(coef: float | Tensor, z: Tensor, name: str) -> float | Tensor:
    """Broadcast a scalar, per-head (H,) or per-sample-per-head (B, H) factor to (B|1, H, 1, 1).

    A 1-D tensor is always read as per-head, even when B == H.
    """
    if not isinstance(coef, Tensor):
        return float(coef)
    b, h = z.shape[0], z.shape[1]
    coef = coef.to(device=z.device, dtype=z.dtype)
    if coef.dim() == 0:
        return coef
    if coef.dim() == 1 and coef.shape[0] == h:
        return coef.view(1, h, 1, 1)
    if coef.dim() == 2 and coef.shape == (b, h):
        return coef.view(b, h, 1, 1)
    raise ValueError(f"{name} must be a scalar, shape (H,)={(h,)} or (B, H)={(b, h)}, got {tuple(coef.shape)}")


def _check_logits_4d(z: Tensor) -> None:
    if z.dim() != 4:
        raise ValueError(f"z must have shape (B, H, R, K), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")


def _unmasked(z: Tensor) -> Tensor:
    """Keys that carry a real score, not an additive mask value.

    Masked logits sit at ``finfo.min`` (or ``-inf``); ``finfo.min + alpha * |finfo.min|`` would climb back
    to a large finite value and un-mask the key. Only logits above ``finfo.min / 2`` are edited; real
    attention scores are many orders of magnitude smaller, so nothing genuine is skipped. NaN is excluded
    as well (it compares False).
    """
    return z > torch.finfo(z.dtype).min / 2


def amplify_logits(z: Tensor, columns: Tensor, alpha: float | Tensor) -> Tensor:
    """PAI amplification: ``z + alpha * |z|`` on the selected keys, ``z`` elsewhere (out of place).

    Args:
        z: pre-softmax attention scores, shape (B, H, R, K) (R query rows, K keys), including the
            additive mask.
        columns: bool, (B, K) for the same keys in every row or (B, R, K) per row; True = amplify.
        alpha: scalar, per-head (H,) or per-sample-per-head (B, H) factor.

    Returns:
        A new tensor of the dtype and shape of ``z``. Masked keys (``z <= finfo.min / 2`` or ``-inf``)
        are left unchanged so they stay masked.
    """
    _check_logits_4d(z)
    return amplify_with_gain(z, (_columns_4d(columns, z) * _coef_4d(alpha, z, "alpha")).to(z.dtype))


def amplify_with_gain(z: Tensor, gain: Tensor, masked: bool = True) -> Tensor:
    """``z + gain * |z|`` on every unmasked key; gain (z's dtype) broadcasts to z, 0 where nothing is amplified.

    The hot path of PAI and PAINT: the gain row is built once per forward and shared by the layers. `masked=False`
    says that no mask was added to z (a decode row that sees every key), so no key needs protecting.
    """
    amplified = torch.addcmul(z, gain, z.abs())
    return torch.where(_unmasked(z), amplified, z) if masked else amplified


def guided_logits(logits_img: Tensor, logits_noimg: Tensor, gamma: float, cutoff: float) -> Tensor:
    """PAI image-free guidance on next-token scores.

    ``lp_img = log_softmax(logits_img)``, ``lp_noimg = log_softmax(logits_noimg)``;
    ``out = gamma * (lp_img - lp_noimg) + lp_noimg``, and ``out = -inf`` wherever
    ``lp_img < log(cutoff) + max(lp_img)`` (the plausibility cut-off; a token exactly at the bound is kept,
    the arg-max of ``lp_img`` always survives).

    Args:
        logits_img: scores of the pass with the image, shape (B, V) (any leading shape works; V last).
        logits_noimg: scores of the unsteered pass without the image, same shape.
        gamma: guidance strength, >= 0; 1 returns ``lp_img`` (with the cut-off applied).
        cutoff: in (0, 1].

    Returns:
        Float tensor (at least float32: the log-softmax runs in float32 for half inputs), shape (B, V).
    """
    if logits_img.shape != logits_noimg.shape:
        raise ValueError(
            f"logits_img and logits_noimg must have the same shape, got {tuple(logits_img.shape)} "
            f"and {tuple(logits_noimg.shape)}"
        )
    gamma = check_nonneg("gamma", gamma)
    cutoff = check_open_closed_unit("cutoff", cutoff)
    dtype = torch.promote_types(torch.promote_types(logits_img.dtype, logits_noimg.dtype), torch.float32)
    lp_img = torch.log_softmax(logits_img.to(dtype), dim=-1)
    lp_noimg = torch.log_softmax(logits_noimg.to(dtype), dim=-1)
    out = gamma * (lp_img - lp_noimg) + lp_noimg
    bound = math.log(cutoff) + lp_img.max(dim=-1, keepdim=True).values
    return out.masked_fill(lp_img < bound, float("-inf"))


# --------------------------------------------------------------------------------------------------
# Engine plug
# --------------------------------------------------------------------------------------------------


@register_method(PAIConfig)
class PAIMethod(AttentionMethod):
    """Amplifies image-key logits of the last query row in the steered layers, at prefill and every decode step.

    The prefill forward's last row predicts the first generated token, so the method acts from token 1 on. With
    ``alpha = 0`` no row is requested and the layer stays on the SDPA fast path (bitwise pass-through). The
    guidance half of PAI is a logits processor (``Handle.logits_processor`` / ``vlm_attn.generate``).
    """

    def __init__(self, config: PAIConfig):
        self.config = config
        self.name = config.name
        self.layers: frozenset[int] = frozenset()

    def bind(self, model: Any, adapter: Any, num_layers: int) -> None:
        self.layers = frozenset(self.config.resolve_layers(num_layers))
        self.num_layers = num_layers

    def rows(self, view: LayerView) -> Tensor | None:
        if self.config.alpha == 0 or view.layer_idx not in self.layers:
            return None
        return last_row(view)

    def decode_rows_cover_all(self, view: LayerView) -> bool:
        return view.call.all_have_image()  # the last row of every sample with an image

    def edit_logits(self, view: LayerView, rows: RowSet, scores: Tensor) -> tuple[Tensor, Tensor]:
        # alpha on image keys, 0 elsewhere: once per forward
        gain = view.shared((self, "gain"), lambda: _columns_4d(view.image_keys, scores) * self.config.alpha)
        out = amplify_with_gain(scores, gain, view.masked)
        changed = rows.own[:, None, :].expand(scores.shape[0], scores.shape[1], rows.own.shape[1])
        tally = view.call.report.get(self)
        if tally is None:
            tally = view.call.report[self] = Tally(self.num_layers)
        tally.add(view.layer_idx, rows.own)
        return out, changed

    def summary(self, call: CallState) -> dict[str, Any]:
        counts = call.report.get(self)
        if counts is None:
            return {"active": False, "reason": "no image or alpha = 0"}
        per_layer = counts.per_layer()
        rows = {i: per_layer[i] for i in sorted(self.layers)}
        return {"active": True, "alpha": self.config.alpha, "layers": sorted(self.layers), "rows_amplified": rows}
