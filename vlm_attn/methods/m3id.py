"""M3ID, Multi-Modal Mutual-Information Decoding (Favero et al., CVPR 2024): amplify what the image adds.

SPEC-baselines §3, restated (no official code exists). With ``lc = log_softmax(l(image))`` and
``lu = log_softmax(l(no image))`` (the second branch is the prompt without its image tokens):

    gamma_t = exp(-lambda * t),   w_t = (1 - gamma_t) / gamma_t = exp(lambda * t) - 1
    out = lc + 1[max(lc) < log(alpha)] * w_t * (lc - lu)

so the image's pointwise mutual information is boosted more as the answer grows ("conditioning dilution"), and
only where the model is not confident (the gate). Defaults (unverified, as MitigV states them): alpha = 0.3,
lambda = 0.02. `t` counts generated tokens from `t_origin` (1: the first generated token has t = 1, as MitigV's
README says; 0 reproduces the re-implementations in which the first token is never changed). `gate=False` drops the
confidence gate (the RITUAL/ONLY re-implementations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .config import Bool, Number, check_nonneg, check_open_closed_unit, setting
from .contrastive import ContrastiveConfig, ContrastiveMethod
from .registry import register_method

__all__ = ["M3IDConfig", "M3IDMethod", "m3id_logits", "m3id_weight"]


def m3id_weight(t: int, lam: float) -> float:
    """``(1 - gamma_t) / gamma_t = exp(lambda * t) - 1`` with ``gamma_t = exp(-lambda * t)`` (t >= 0)."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"t must be an integer >= 0, got {t!r}")
    return math.expm1(check_nonneg("lam", lam) * t)


def m3id_logits(logits: Tensor, free_logits: Tensor, t: int, lam: float, alpha: float, gate: bool = True) -> Tensor:
    """M3ID's step rule on (B, V) logits of the image branch and the image-free branch.

    Returns ``lc + g * w_t * (lc - lu)`` (log-softmax inputs, float32 at least), with ``g = 1`` where
    ``max(lc) < log(alpha)`` (or everywhere when `gate` is False) and 0 elsewhere, per row.
    """
    if logits.shape != free_logits.shape:
        raise ValueError(f"the two branches' logits must have the same shape, got {tuple(logits.shape)} and "
                         f"{tuple(free_logits.shape)}")
    alpha = check_open_closed_unit("alpha", alpha)
    w = m3id_weight(t, lam)
    dtype = torch.promote_types(torch.promote_types(logits.dtype, free_logits.dtype), torch.float32)
    lc = torch.log_softmax(logits.to(dtype), dim=-1)
    lu = torch.log_softmax(free_logits.to(dtype), dim=-1)
    boost = w * (lc - lu)
    if gate:
        unsure = lc.max(dim=-1, keepdim=True).values < math.log(alpha)
        boost = boost * unsure.to(dtype)
    return lc + boost


@dataclass(frozen=True)
class M3IDConfig(ContrastiveConfig):
    """Settings of M3ID (SPEC-baselines §3). Validated on construction; ConfigError names the class and field.

    Attributes:
        lam: forgetting rate lambda >= 0 (0.02; 0 = pass-through, no branch runs).
        alpha: confidence threshold in (0, 1]: the boost applies where the top probability is below it (0.3).
        t_origin: t of the first generated token (1, or 0 for the re-implementations' convention).
        gate: apply the confidence gate (False: boost at every step).
    """

    name: ClassVar[str] = "m3id"
    description: ClassVar[str] = "M3ID: boost lc - lu (image vs no image) with a weight growing in t (CVPR 2024)"
    branch: ClassVar[str] = "no_image"

    lam: float = setting(0.02, "forgetting rate lambda: weight exp(lambda t) - 1 (0 = off)", Number(low=0.0))
    alpha: float = setting(0.3, "confidence gate: boost only where max p < alpha", Number(0.0, 1.0, low_open=True))
    t_origin: int = setting(1, "t of the first generated token (0 or 1)", Number(0, 1, integer=True))
    gate: bool = setting(True, "apply the confidence gate", Bool())

    @property
    def active(self) -> bool:
        return self.lam > 0

    def combine(self, logits: Tensor, branch_logits: Tensor, step: int) -> Tensor:
        return m3id_logits(logits, branch_logits, step + self.t_origin, self.lam, self.alpha, self.gate)


@register_method(M3IDConfig)
class M3IDMethod(ContrastiveMethod):
    """M3ID's engine plug: no attention edit (the boost is a logits processor on the image-free branch)."""
