"""ICD, Instruction Contrastive Decoding (Wang et al., Findings of ACL 2024): contrast with a disturbed instruction.

SPEC-baselines §2, restated. The second branch sees the same image with a role-style "disturbance" instruction
written into the prompt (the official LLaVA code puts it where the system prompt was:
``"<disturbance> USER: <image>\\n<question> ASSISTANT:"``); each step decodes from the official sampler's rule
``(1 + alpha) * l - alpha * l'`` with APC(beta) on the normal branch (`amplified_contrast`, the same as VCD's).
Defaults: alpha = 1, beta = 0.1, the disturbance "You are a confused objects detector to provide a fuzzy overview or
impression of the image." (the fourth of the five the official scripts sweep).

Where we differ: the disturbance is written as a prefix of the rendered chat prompt (after the tokenizer's BOS
token, followed by `separator`) in every family, so the family's own system prompt, if its template has one, stays
(LLaVA-1.5's HF template has none: there the branch prompt is the official one); the contrast branch keeps its own
cache; greedy and sampled decoding both run ICD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .config import Text, setting
from .contrastive import AmplifiedContrastConfig, ContrastiveMethod, amplified_contrast
from .registry import register_method

__all__ = ["DISTURBANCES", "ICDConfig", "ICDMethod", "icd_logits"]

DISTURBANCES: tuple[str, ...] = (
    "You are an object detector to recognize every different objects.",
    "You are an object detector to recognize every different objects by focusing the shapes, colors and "
    "relationships of objects.",
    "I want you avoid any specific identification or categorization of the objects depicted.",
    "You are a confused objects detector to provide a fuzzy overview or impression of the image.",
    "You are an object detector to provide a general overview or impression of the image.",
)
"""The five instructions of the official scripts (`icd_llava_pope.py`), in their order."""


def icd_logits(logits: Tensor, disturbed_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """ICD's step rule (official sampler): ``(1 + alpha) * l - alpha * l'``, APC(beta) on ``l``."""
    return amplified_contrast(logits, disturbed_logits, alpha, beta)


@dataclass(frozen=True)
class ICDConfig(AmplifiedContrastConfig):
    """Settings of ICD (SPEC-baselines §2). Validated on construction; ConfigError names the class and field.

    Attributes:
        alpha: contrast strength >= 0 (official 1; 0 = pass-through, no branch runs).
        beta: adaptive plausibility cut-off in (0, 1] (official 0.1).
        disturbance: the instruction written into the contrast branch's prompt.
        separator: text between the disturbance and the rest of the prompt.
    """

    name: ClassVar[str] = "icd"
    description: ClassVar[str] = "ICD: contrast with a disturbed instruction, (1+a)l - a l' + APC (ACL Findings 2024)"
    branch: ClassVar[str] = "prompt_prefix"

    disturbance: str = setting(DISTURBANCES[3], "instruction written into the contrast prompt", Text(nonempty=True))
    separator: str = setting(" ", "text between the disturbance and the prompt", Text())

    def prefix_text(self) -> str:
        """What the contrast branch's prompt starts with (after BOS)."""
        return self.disturbance + self.separator


@register_method(ICDConfig)
class ICDMethod(ContrastiveMethod):
    """ICD's engine plug: no attention edit (the contrast is a logits processor on the disturbed-prompt branch)."""
