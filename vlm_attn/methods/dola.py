"""DoLa: decoding by contrasting the final layer with a premature one (Chuang et al., ICLR 2024), for VLMs.

Same forward, no second pass (SPEC-baselines §6). At each step the LM head reads the last position's hidden state at
every candidate layer ``j`` (``hidden_states[j]``: j = 0 is the embedding output), the premature layer is the one
whose distribution is farthest from the final one by Jensen-Shannon divergence, and the next token is decoded from

    logits = lp_L - alpha * lp_j*,   tokens with lp_L < max lp_L + log(relative_top) set to -inf,

``lp = log_softmax``. ``alpha = 1`` is DoLa; ``alpha = 0`` turns the method off (nothing is installed). As in the
official code and transformers' port, the premature layers are read *without* the final norm (``premature_norm``
turns it on); the final layer's logits are the model's own. Where we differ from the code: the layer is chosen per
sample (the original runs batch 1; transformers picks one layer for the whole batch by the batch-mean JSD, which
``per_sample=False`` reproduces), and a candidate layer beyond the model is an error rather than silently dropped.
The original scripts decode DoLa with ``repetition_penalty=1.2``: that is a generation setting, pass it to generate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .config import Bool, ConfigError, Custom, MethodConfig, Number, check_layers, setting
from .registry import register_method
from ._readout import ReadoutMethod, check_layer_range

__all__ = ["DoLaConfig", "DoLaMethod", "candidate_layers", "dola_logits", "jensen_shannon", "relative_top_filter"]

# ------------------------------------------------------------------------------------------- config


def _check_dola_layers(name: str, value: Any) -> str | tuple[int, ...]:
    if value in ("low", "high"):
        return value
    try:
        layers = check_layers(name, value)
    except ConfigError:
        layers = None
    if layers is None:
        raise ConfigError(f"{name} must be 'low', 'high' or premature layer indices >= 0 such as 0,2 "
                          f"(hidden_states numbering: 0 = embeddings), got {value!r} ({type(value).__name__})")
    return layers


def _parse_dola_layers(value: str) -> str | tuple[int, ...]:
    value = value.strip()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        return value  # "low", "high", or a bad value that the config refuses with its message


@dataclass(frozen=True)
class DoLaConfig(MethodConfig):
    """Settings of DoLa (SPEC-baselines §6). Validated on construction.

    Attributes:
        layers: candidate premature layers: "low" (the lower half, every second layer), "high" (the upper half) as
            in transformers' ``dola_layers``, or explicit ``hidden_states`` indices in ``[0, L)``.
        alpha: weight of the premature log-probabilities (1 = DoLa; 0 = off).
        relative_top: plausibility filter on the final layer, in [0, 1) (0.1 in DoLa; 0 keeps every token).
        premature_norm: apply the final norm to premature layers before the LM head (the official code does not).
        per_sample: choose the premature layer per sample (True) or one for the batch by mean JSD (transformers).
    """

    name: ClassVar[str] = "dola"
    description: ClassVar[str] = "DoLa: contrast final-layer log-probs with the JSD-chosen premature layer (ICLR 2024)"

    layers: str | tuple[int, ...] = setting("low", "candidate premature layers: low, high or indices such as 0,2",
                                            Custom(_check_dola_layers, "low, high or layers such as 0,2",
                                                   _parse_dola_layers))
    alpha: float = setting(1.0, "weight of the premature log-probs, lp_L - alpha*lp_j (1 = DoLa, 0 = off)",
                           Number(low=0.0))
    relative_top: float = setting(0.1, "keep tokens with p >= relative_top * max p under the final layer (0: all)",
                                  Number(0.0, 1.0, high_open=True))
    premature_norm: bool = setting(False, "apply the final norm to premature layers (official code: no)", Bool())
    per_sample: bool = setting(True, "choose the premature layer per sample (False: one per batch, as transformers)",
                               Bool())


# ------------------------------------------------------------------------------------------- math


def candidate_layers(layers: str | tuple[int, ...], num_layers: int, tied: bool) -> tuple[int, ...]:
    """The premature ``hidden_states`` indices for a model with `num_layers` decoder layers (transformers' rule).

    "low" = ``range(start, L // 2, 2)``, "high" = ``range(L // 2, L, 2)`` for L <= 40 (beyond: ``range(start, 20,
    2)`` / ``range(L - 20, L, 2)``); ``start`` is 0, or 2 when the LM head shares the embedding matrix (its read-out
    of the embeddings would be trivial; 1 for a 2-layer model), and "low" is ``[start]`` when start = L // 2.
    """
    if isinstance(layers, tuple):
        return check_layer_range("DoLaConfig.layers", layers, num_layers, f"a model with {num_layers} decoder layers")
    start = 0 if not tied else (2 if num_layers > 2 else (1 if num_layers == 2 else 0))
    if layers == "low":
        if start == num_layers // 2:
            return (start,)
        return tuple(range(start, num_layers // 2, 2) if num_layers <= 40 else range(start, 20, 2))
    return tuple(range(num_layers // 2, num_layers, 2) if num_layers <= 40 else range(num_layers - 20, num_layers, 2))


def jensen_shannon(final_logits: Tensor, premature_logits: Tensor) -> Tensor:
    """(J, B) divergence of each premature layer from the final one, as DoLa computes it.

    ``M = (p_L + p_j) / 2``; ``JSD_j = (mean_v M (log M - lp_L) + mean_v M (log M - lp_j)) / 2`` (the KL terms are
    averaged over the vocabulary, not summed, like ``kl_div(..., reduction="none").mean(-1)``).
    `final_logits` (B, V), `premature_logits` (J, B, V).
    """
    final = final_logits.float()[None]
    early = premature_logits.float()
    lp_final, lp_early = final.log_softmax(-1), early.log_softmax(-1)
    m = 0.5 * (lp_final.exp() + lp_early.exp())
    log_m = m.log()
    kl_final = torch.where(m > 0, m * (log_m - lp_final), torch.zeros_like(m)).mean(-1)
    kl_early = torch.where(m > 0, m * (log_m - lp_early), torch.zeros_like(m)).mean(-1)
    return 0.5 * (kl_final + kl_early)


def relative_top_filter(final_lp: Tensor, relative_top: float) -> Tensor:
    """(B, V) bool: tokens kept by DoLa's filter, ``lp_L >= max lp_L + log(relative_top)`` (at least the top one).

    `final_lp` are final-layer log-probabilities; ``relative_top = 0`` keeps everything.
    """
    if relative_top <= 0:
        return torch.ones_like(final_lp, dtype=torch.bool)
    bound = final_lp.max(dim=-1, keepdim=True).values + math.log(relative_top)
    return final_lp >= bound


def dola_logits(final_logits: Tensor, premature_logits: Tensor, alpha: float = 1.0, relative_top: float = 0.1,
                per_sample: bool = True) -> tuple[Tensor, Tensor]:
    """DoLa's next-token scores and the chosen premature layer (index into the J candidates) per sample.

    ``out = lp_L - alpha * lp_{j*}`` with ``j* = argmax_j JSD_j`` (per sample, or of the batch-mean JSD), ``-inf``
    outside the relative-top set. Returns ``(out (B, V) float32, chosen (B,) long)``.
    """
    if premature_logits.dim() != 3 or premature_logits.shape[1:] != final_logits.shape:
        raise ValueError(f"premature_logits must have shape (J, B, V) with (B, V)={tuple(final_logits.shape)}, "
                         f"got {tuple(premature_logits.shape)}")
    js = jensen_shannon(final_logits, premature_logits)  # (J, B)
    batch = final_logits.shape[0]
    chosen = js.argmax(dim=0) if per_sample else js.mean(dim=1).argmax().expand(batch)
    lp_final = final_logits.float().log_softmax(-1)
    lp_early = premature_logits.float().log_softmax(-1)[chosen, torch.arange(batch, device=chosen.device)]
    out = lp_final - alpha * lp_early
    return out.masked_fill(~relative_top_filter(lp_final, relative_top), float("-inf")), chosen


# ------------------------------------------------------------------------------------------- engine plug


@register_method(DoLaConfig)
class DoLaMethod(ReadoutMethod):
    """Rewrites the last position's logits of every forward (prefill and each decode step) with DoLa's contrast."""

    def __init__(self, config: DoLaConfig):
        super().__init__()
        self.config = config
        self.name = config.name
        self.candidates: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.config.alpha > 0

    def resolve(self, num_layers: int) -> None:
        tied = self.head.weight is self.adapter.language_model().get_input_embeddings().weight
        self.candidates = candidate_layers(self.config.layers, num_layers, tied)
        if not self.candidates:
            raise ValueError(f"DoLaConfig.layers={self.config.layers!r} selects no premature layer in a model with "
                             f"{num_layers} decoder layers: pass explicit layers such as 0,1")

    def layer_inputs(self) -> tuple[int, ...]:
        return self.candidates

    def head_rows(self, head_input: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        if any(("in", j) not in states for j in self.candidates):
            return None
        rows = torch.stack([states[("in", j)][:, -1] for j in self.candidates], dim=1)  # (B, J, D)
        return self.norm(rows) if self.config.premature_norm else rows

    def rewrite(self, logits: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        if "head" not in states:
            return None
        early = states["head"].transpose(0, 1)  # (J, B, V): the candidates' read-outs from the LM head call
        new, chosen = dola_logits(logits[:, -1], early, self.config.alpha, self.config.relative_top,
                                  self.config.per_sample)
        call = self.call()
        if call is not None:
            call.report.setdefault(self, []).append(chosen)
        out = logits.float().clone()
        out[:, -1] = new
        return out

    def summary(self, call: Any) -> dict[str, Any]:
        if not self.enabled:
            return {"active": False, "reason": "alpha = 0"}
        counts: dict[int, int] = {}
        for chosen in call.report.get(self, []):
            for idx in chosen.tolist():
                counts[self.candidates[idx]] = counts.get(self.candidates[idx], 0) + 1
        return {"active": True, "candidate_layers": list(self.candidates), "alpha": self.config.alpha,
                "relative_top": self.config.relative_top, "chosen_layer_counts": counts}
