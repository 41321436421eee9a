"""PAINTConfig: PAINT's settings, validated on construction (moved verbatim from the former methods/paint.py)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..heads import HeadSensitivity
from ..pai import _check_bool, _check_nonneg, _check_open_closed_unit, _check_real, resolve_layers, validate_layers

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
