"""PAINTConfig: PAINT's settings on the shared config base (validated on construction; errors name the field)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..config import Bool, Choice, ConfigError, Custom, Layers, MethodConfig, Number, check_choice, check_ratio, setting
from ..heads import HeadSensitivity
from ..pai import resolve_layers

logger = logging.getLogger(__name__)

#: PAINT reports that alpha = 0.8 collapses generation (captions average 41 tokens); from here on we warn.
COLLAPSE_ALPHA: float = 0.8

PatchOrder = Literal["raster", "merge_grouped"]
SummaryRounding = Literal["paper", "official"]
SUMMARY_ROUNDINGS: tuple[str, ...] = ("paper", "official")


def _check_ratio(name: str, value: Any) -> float:
    """Finite real in ``[0, 1]`` (the selection functions' argument check)."""
    return check_ratio(name, value)


def _check_rounding(value: Any) -> str:
    return check_choice("summary_rounding", value, SUMMARY_ROUNDINGS)


def _check_head_sensitivity(name: str, value: Any) -> Any:
    if not isinstance(value, (str, os.PathLike, HeadSensitivity)):
        raise ConfigError(f"{name} must be a HeadSensitivity, a path to its JSON, or None, got {value!r} "
                          f"({type(value).__name__})")
    return value


@dataclass(frozen=True)
class PAINTConfig(MethodConfig):
    """Settings of PAINT (SPEC section 4). Validated on construction; ConfigError names the class and field.

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

    name: ClassVar[str] = "paint"
    description: ClassVar[str] = ("PAINT: amplify informative and summary image tokens picked by the vision "
                                  "encoder's attention, + PAI's guidance")

    alpha: float = setting(0.7, "amplification of the local (informative) token set (0.8 collapses)",
                           Number(low=0.0))
    beta: float = setting(0.4, "amplification of the summary token set", Number(low=0.0))
    local_ratio: float = setting(0.25, "fraction of patches kept by the local stream", Number(0.0, 1.0))
    spatial_ratio: float = setting(0.05, "fraction of patches kept by the spatial stream", Number(0.0, 1.0))
    iqr_k: float = setting(1.5, "IQR multiplier of the summary-token outlier rule", Number(low=0.0))
    summary_rounding: SummaryRounding = setting(
        "paper", "paper: keep every IQR outlier; official: the official code's int(n * share)",
        Choice(SUMMARY_ROUNDINGS))
    guidance: bool = setting(True, "run PAI's image-free logits guidance beside the attention edit", Bool())
    gamma: float = setting(1.1, "guidance strength (1 = no effect)", Number(low=0.0))
    cutoff: float = setting(0.1, "guidance plausibility cut-off", Number(0.0, 1.0, low_open=True))
    layers: tuple[int, ...] | None = setting(None, "decoder layers to steer, e.g. 2,5 (default 2..L-1)", Layers())
    head_sensitivity: str | os.PathLike[str] | HeadSensitivity | None = setting(
        None, "per-head modulation: a JSON from calibrate-heads (default: one alpha for every head)",
        Custom(_check_head_sensitivity, "a calibrate-heads JSON path", optional=True))
    kappa: float = setting(1.0, "sharpness of the head modulation", Number(low=0.0))
    head_top_fraction: float | None = setting(None, "keep only this fraction of the most sensitive heads",
                                              Number(0.0, 1.0, low_open=True, optional=True))

    def validate(self) -> None:
        super().validate()
        if self.alpha >= COLLAPSE_ALPHA:
            logger.warning(
                "PAINT alpha=%.3g >= %.1f: the paper reports collapsed generation at alpha 0.8 "
                "(captions average 41 tokens); 0.7 is its best setting",
                self.alpha,
                COLLAPSE_ALPHA,
            )
        if self.head_sensitivity is None and (self.kappa != 1.0 or self.head_top_fraction is not None):
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
