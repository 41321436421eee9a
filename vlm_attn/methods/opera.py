"""OPERA (Huang et al., CVPR 2024): over-trust penalty and retrospection-allocation in beam search.

OPERA is a decoding method, not an attention edit: during beam search it looks ahead at each beam's top
`num_attn_candidates` tokens, reads the last decoder layer's attention (max over heads) of each candidate over the
response so far, and penalises candidates whose attention map has a "column" (every later token attending strongly
to one earlier summary token). When the same summary position keeps being flagged, decoding rolls back to it and
the tokens chosen there before are forbidden.

This module holds the settings and the pure rules (hand-checkable on small tensors); the decoding loop that runs
forwards is `vlm_attn.passes.opera_search`.

Rules (official code, shikiw/OPERA `opera_beam_search`), per step and beam, with R response tokens so far:
- rows: last-layer attention, max over heads, each row renormalised to sum 1 over all keys;
- window W: the (R+1) x (R+1) map of the response tokens and the candidate over the response columns;
- column score phi_j = prefactor * prod_{i >= j} (scale_factor * W[i, j]); penalty = max_j phi_j, location =
  argmax_j; while R + 1 <= first_tokens the penalty is minus the candidate row's attention mass on the image;
- candidate logits -= penalty_weight * penalty; the other tokens cannot be chosen;
- retrospection: the per-beam mode (over candidates) of the locations is recorded each step; the sample's
  location is the mode over beams; roll back when every beam's record holds it more than `threshold` times, it is
  >= min_rollback_location, and the position has been re-decided fewer than `num_attn_candidates` times (else one
  position earlier, else no rollback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .config import Bool, Choice, MethodConfig, Number, setting
from .registry import register_decoding


@register_decoding
@dataclass(frozen=True)
class OPERAConfig(MethodConfig):
    """Settings of OPERA; defaults are the official code's (LLaVA-1.5 CHAIR/POPE runs).

    Attributes:
        num_beams: beams of the search (official 5).
        scale_factor: sigma, multiplies every attention weight of the window before the column product (50).
        threshold: rollback when a location is recorded more than this many times in every beam (15).
        num_attn_candidates: top candidates per beam looked ahead at (5); also the per-position rollback cap.
        penalty_weight: alpha, weight of the over-trust penalty on the candidate logits (1.0).
        window_size: how many past steps can be rolled back to (512, the official history length).
        first_tokens: response lengths (candidate included) up to this use the image-attention reward (10).
        min_rollback_location: summary locations below this never trigger a rollback (10).
        score_prefactor: the constant in front of the column product (1e-7).
        normalise_over: "candidates" (official: log-softmax over the penalised candidates only) or "vocabulary"
            (log-softmax over the whole vocabulary; with penalty_weight 0 and no rollback this is exactly
            transformers' beam search when num_attn_candidates >= 2 * num_beams).
        rollback: False turns the retrospection off (the penalty alone).
    """

    name: ClassVar[str] = "opera"
    description: ClassVar[str] = "OPERA (decoding): over-trust penalty and rollback in beam search"

    num_beams: int = setting(5, "beams of the search", Number(low=2, integer=True))
    scale_factor: float = setting(50.0, "sigma: scales attention weights before the column product",
                                  Number(low=0.0, low_open=True))
    threshold: int = setting(15, "roll back when a location is recorded more than this many times",
                             Number(low=0, integer=True))
    num_attn_candidates: int = setting(5, "candidates per beam looked ahead at (also the per-position rollback cap)",
                                       Number(low=1, integer=True))
    penalty_weight: float = setting(1.0, "alpha: weight of the over-trust penalty", Number(low=0.0))
    window_size: int = setting(512, "how many past steps a rollback can reach", Number(low=1, integer=True))
    first_tokens: int = setting(10, "response lengths up to this use the image-attention reward",
                                Number(low=0, integer=True))
    min_rollback_location: int = setting(10, "summary locations below this never trigger a rollback",
                                         Number(low=0, integer=True))
    score_prefactor: float = setting(1e-7, "constant in front of the column product", Number(low=0.0, low_open=True))
    normalise_over: str = setting("candidates", "log-softmax over the candidates (official) or the vocabulary",
                                  Choice(("candidates", "vocabulary")))
    rollback: bool = setting(True, "retrospection-allocation rollback on/off", Bool())


def normalise_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum over the last dim (all keys), as the official code does after the max over heads."""
    return rows / rows.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)


def column_scores(window: torch.Tensor, scale_factor: float, prefactor: float) -> torch.Tensor:
    """phi_j = prefactor * prod_{i >= j} (scale_factor * W[i, j]) for every column j of (..., L, L) windows -> (..., L).

    W is lower-triangular (token i sees j <= i); the product runs over the rows at and below the diagonal. Computed
    in float32 (the official code stores it in float16, where long products saturate).
    """
    length = window.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=window.device).tril()
    factors = torch.where(lower, window.float() * scale_factor, torch.ones((), device=window.device))
    return prefactor * factors.prod(dim=-2)


def candidate_penalty(
    window: torch.Tensor, image_mass: torch.Tensor, config: OPERAConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, location) per candidate from its (..., L, L) window and image mass (...,).

    L = response length with the candidate. Location = argmax_j phi_j; penalty = max_j phi_j, or -image_mass while
    L <= first_tokens (a reward for looking at the image).
    """
    phi = column_scores(window, config.scale_factor, config.score_prefactor)
    score, location = phi.max(dim=-1)
    if window.shape[-1] <= config.first_tokens:
        return -image_mass.float(), location
    return score, location


def beam_location(locations: torch.Tensor) -> torch.Tensor:
    """Per-beam mode over its candidates' locations: (beams, N) -> (beams,)."""
    return locations.mode(dim=-1).values


def rollback_target(
    history: torch.Tensor, counts: dict[int, int], config: OPERAConfig
) -> int | None:
    """The response index to re-decide, or None: retrospection for one sample.

    Args:
        history: (beams, steps) long, each beam's recorded location per step (this step's included).
        counts: response index -> rollbacks already made there (read, not changed).
        config: threshold, min_rollback_location and num_attn_candidates (the cap).

    The sample's location is the mode over beams of the latest locations; roll back to it when every beam's
    record holds it more than `threshold` times and it is >= min_rollback_location. The token at that index is
    re-decided; when that index has been re-decided `num_attn_candidates` times, the one before it is, else None.
    """
    if not config.rollback or history.shape[1] == 0:
        return None
    location = int(history[:, -1].mode().values)
    if not bool(((history == location).sum(dim=1) > config.threshold).all()):
        return None
    if location < config.min_rollback_location:
        return None
    for target in (location, location - 1):
        if counts.get(target, 0) < config.num_attn_candidates:
            return target
    return None
