"""What the contrastive decoders (VCD, ICD, M3ID) share: the config base, the engine plug and the common math.

A contrastive decoder runs a *second branch* (a variant of the prompt with its own KV cache, never steered; built
and run by :mod:`vlm_attn.passes.branch`) and combines the two next-token logits with a pure rule. The config says
which branch (`branch`: "no_image", "noised_image" or "prompt_prefix") and holds the rule (`combine`); the engine
plug does nothing to attention, so these methods compose with the attention methods (e.g. VCD + VAR: the main
branch is steered by VAR, the contrast branch runs plain).

Shared math (SPEC-baselines §1, §2): the amplified contrast ``d = (1 + alpha) * l - alpha * l'`` and the adaptive
plausibility constraint APC(beta): ``d[y] = -inf`` wherever ``l[y] < max(l) + log(beta)`` (the clean branch's
logits; the same set as ``p[y] < beta * max p``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..engine.method import AttentionMethod, CallState
from .config import MethodConfig, Number, check_nonneg, check_open_closed_unit, setting

__all__ = ["ContrastiveConfig", "ContrastiveMethod", "amplified_contrast", "implausible"]


def _same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"the two branches' logits must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def implausible(logits: Tensor, beta: float) -> Tensor:
    """Bool mask of the tokens APC(beta) removes: ``logits < max(logits) + log(beta)`` along the last axis.

    Reads raw logits or log-probabilities alike (the per-row normaliser shifts both sides). The arg-max always
    stays (beta <= 1); a token exactly at the bound stays.
    """
    beta = check_open_closed_unit("beta", beta)
    return logits < logits.max(dim=-1, keepdim=True).values + math.log(beta)


def amplified_contrast(logits: Tensor, branch_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """VCD/ICD rule: ``(1 + alpha) * l - alpha * l'``, then ``-inf`` where APC(beta) on ``l`` removes the token.

    Args:
        logits: (B, V) scores of the main branch (raw lm-head output, after earlier processors).
        branch_logits: (B, V) raw logits of the contrast branch.
        alpha: contrast strength >= 0. beta: plausibility cut-off in (0, 1].

    Returns a float tensor (at least float32) of shape (B, V).
    """
    _same_shape(logits, branch_logits)
    alpha = check_nonneg("alpha", alpha)
    dtype = torch.promote_types(torch.promote_types(logits.dtype, branch_logits.dtype), torch.float32)
    l, l2 = logits.to(dtype), branch_logits.to(dtype)
    out = (1.0 + alpha) * l - alpha * l2
    return out.masked_fill(implausible(l, beta), float("-inf"))


@dataclass(frozen=True)
class ContrastiveConfig(MethodConfig, ABC):
    """Base of the contrastive decoders' configs. Subclasses set `branch` and implement `combine` and `active`."""

    branch: ClassVar[str] = ""  # "no_image", "noised_image" or "prompt_prefix" (vlm_attn.passes.branch builds it)

    @property
    @abstractmethod
    def active(self) -> bool:
        """False when the strength is 0: the scores then pass through bitwise and no branch runs."""

    @abstractmethod
    def combine(self, logits: Tensor, branch_logits: Tensor, step: int) -> Tensor:
        """The next-token scores from both branches' (B, V) logits; `step` = tokens generated before this one."""


@dataclass(frozen=True)
class AmplifiedContrastConfig(ContrastiveConfig):
    """The settings VCD and ICD share: their rule is `amplified_contrast` with strength `alpha` and cut-off `beta`;
    they differ only in the branch (noised image / disturbed instruction) and its own settings."""

    alpha: float = setting(1.0, "contrast strength: (1+alpha) l - alpha l' (0 = off)", Number(low=0.0))
    beta: float = setting(0.1, "plausibility cut-off: tokens with p < beta * max p are removed",
                          Number(0.0, 1.0, low_open=True))

    @property
    def active(self) -> bool:
        return self.alpha > 0

    def combine(self, logits: Tensor, branch_logits: Tensor, step: int) -> Tensor:
        return amplified_contrast(logits, branch_logits, self.alpha, self.beta)


class ContrastiveMethod(AttentionMethod):
    """The engine plug of a contrastive decoder: it edits no attention (SDPA fast path kept) and reports settings.

    The decoding itself is a logits processor (`Handle.logits_processor`, `vlm_attn.steered_generate`).
    """

    def __init__(self, config: ContrastiveConfig):
        self.config = config
        self.name = config.name

    def summary(self, call: CallState) -> dict[str, Any]:
        if not self.config.active:
            return {"active": False, "reason": "strength 0 (scores pass through)"}
        return {"active": True, "branch": type(self.config).branch, **self.config.to_dict()}
