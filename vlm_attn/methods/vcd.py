"""VCD, Visual Contrastive Decoding (Leng et al., CVPR 2024): contrast with a diffusion-noised copy of the image.

SPEC-baselines §1, restated. The second branch sees the same prompt with the preprocessed (normalised) pixel tensor
``v`` replaced by the DDPM forward-diffusion sample at step T:

    betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5,   abar_T = prod_{s <= T} (1 - betas_s)
    v' = sqrt(abar_T) * v + sqrt(1 - abar_T) * eps,   eps ~ N(0, I)      (T = 500: v' = 0.863 v + 0.505 eps)

and each step decodes from ``(1 + alpha) * l(v) - alpha * l(v')`` with the adaptive plausibility constraint APC(beta)
on ``l(v)`` (`vlm_attn.methods.contrastive.amplified_contrast`). Defaults: the paper's alpha = 1, beta = 0.1,
T = 500. Where we differ from the official code: the noise comes from a generator seeded with `seed` for each image
(the same picture gets the same noise whatever else is in the batch; the official code draws from the global RNG),
the contrast branch keeps its own cache at every step (the official code before commit c637c85 gave it the clean
cache, so VCD acted on the first token only), and VCD runs under greedy and sampled decoding alike (the official
code only replaced the sampling loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from .config import Number, setting
from .contrastive import AmplifiedContrastConfig, ContrastiveMethod, amplified_contrast
from .registry import register_method

__all__ = [
    "NUM_DIFFUSION_STEPS", "VCDConfig", "VCDMethod", "add_diffusion_noise", "diffusion_coefficients", "vcd_logits",
]

NUM_DIFFUSION_STEPS = 1000


def diffusion_coefficients(step: int, num_steps: int = NUM_DIFFUSION_STEPS) -> tuple[float, float]:
    """``(sqrt(abar_T), sqrt(1 - abar_T))`` of VCD's sigmoid schedule at 0-based step T (float64 arithmetic)."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
        raise ValueError(f"noise_step must be an integer in [0, {num_steps - 1}], got {step!r}")
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    abar = float(torch.cumprod(1.0 - betas, dim=0)[step])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def _image_parts(pixels: Tensor, inputs: Mapping[str, Any]) -> list[int]:
    """Row counts of `pixels` per image: Qwen-VL's flat patches split by `image_grid_thw`, else one row per image."""
    grid = inputs.get("image_grid_thw")
    if isinstance(grid, Tensor) and pixels.dim() == 2 and int(grid.prod(-1).sum()) == pixels.shape[0]:
        return [int(n) for n in grid.prod(-1)]
    return [1] * pixels.shape[0]


def add_diffusion_noise(pixels: Tensor, step: int, seed: int, inputs: Mapping[str, Any] | None = None) -> Tensor:
    """``sqrt(abar_T) * pixels + sqrt(1 - abar_T) * eps``, eps from ``torch.Generator().manual_seed(seed)`` per image.

    Each image (a row of `pixels`, or a Qwen-VL patch group) gets its own draw from a freshly seeded generator, so
    an image's noise does not depend on the batch it is in. Families whose rows are tiles (InternVL, LLaVA-NeXT's
    and Idefics3's views sit in one row per image, InternVL's tiles one per row) draw per row, so InternVL's tiles
    of one image share the pattern. Computed in float32, returned in `pixels`' dtype.
    """
    a, b = diffusion_coefficients(step)
    out = torch.empty_like(pixels)
    start = 0
    for rows in _image_parts(pixels, inputs or {}):
        part = pixels[start : start + rows]
        gen = torch.Generator().manual_seed(int(seed))
        eps = torch.randn(part.shape, generator=gen, dtype=torch.float32).to(part.device)
        out[start : start + rows] = (a * part.float() + b * eps).to(pixels.dtype)
        start += rows
    return out


def vcd_logits(logits: Tensor, noised_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """VCD's step rule: ``(1 + alpha) * l(v) - alpha * l(v')``, APC(beta) on ``l(v)`` (see `amplified_contrast`)."""
    return amplified_contrast(logits, noised_logits, alpha, beta)


@dataclass(frozen=True)
class VCDConfig(AmplifiedContrastConfig):
    """Settings of VCD (SPEC-baselines §1). Validated on construction; ConfigError names the class and field.

    Attributes:
        alpha: contrast strength >= 0 (paper 1; 0 = pass-through, no branch runs).
        beta: adaptive plausibility cut-off in (0, 1] (paper 0.1; the official POPE script uses 0.2).
        noise_step: diffusion step T of the distorted image, 0..999 (official 500).
        seed: seed of each image's noise draw.
    """

    name: ClassVar[str] = "vcd"
    description: ClassVar[str] = "VCD: contrast with a diffusion-noised image, (1+a)l(v) - a l(v') + APC (CVPR 2024)"
    branch: ClassVar[str] = "noised_image"

    noise_step: int = setting(500, "diffusion step of the noised image (0..999)", Number(0, 999, integer=True))
    seed: int = setting(55, "seed of each image's noise", Number(low=0, integer=True))

    def noise(self, pixels: Tensor, inputs: Mapping[str, Any]) -> Tensor:
        """The distorted pixels v' of the contrast branch."""
        return add_diffusion_noise(pixels, self.noise_step, self.seed, inputs)


@register_method(VCDConfig)
class VCDMethod(ContrastiveMethod):
    """VCD's engine plug: no attention edit (the contrast is a logits processor on the noised-image branch)."""
