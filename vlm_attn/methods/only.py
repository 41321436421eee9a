"""ONLY: one-layer intervention for a text-biased branch, fused adaptively (Wan et al., ICCV 2025).

In ONE forward (SPEC-baselines §5). At decoder layer ``k`` (default 0) the last query row's attention ``A`` (every
head, post-softmax, from our attention function) is split into text keys (every real non-image key except the
sample's first token, the BOS of the official code) and image keys. In each group, per head, weights above the
group's ``mean + std`` (unbiased std) are zeroed, giving ``A~``; the text-to-visual entropy ratio of each head is

    TVER_h = H(T~ / sum T~) / H(I~ / sum I~),   H(p) = -sum p log(p + 1e-6)   (NaN -> 0 for text, inf for image),

and heads with ``TVER_h < mean_h TVER`` get ``A~_h = 0``. The branch ``o~ = o_proj(A~ V)`` is not propagated
through the middle layers: it enters the *last* decoder layer with that layer's input ``r`` at the last position,

    u = input_layernorm(o~) + residual_mix * r,   z = u + MLP(post_attention_layernorm(u)),
    l_cd = lm_head(norm(z) + final_mix * norm(h_L)),

(Gemma layers use their own pre/post feed-forward norms around the MLP). The two logits are fused per sample:
``d = sum_v |softmax(l) - softmax(l_cd)|`` (L1, not halved); ``f = l + alpha_pos * l_cd`` when ``d < gamma``, else
``f = (1 + alpha_neg) * l - alpha_neg * l_cd``; tokens with ``l < max l + log(beta)`` are set to -inf (APC).

Where we differ from the official code: positions come from the image mask (the official code hard-codes
LLaVA-1.5's 35 / 576 / layer 31, so "the last layer" is our generalisation of its layer 31 of 32), the distance and
the choice are per sample (the official sum over the batch runs batch 1), and the branch is computed for the last
position only (the only one decoded). The official decoding samples (T = 1, top_p = 1); pass that to generate.
``alpha_pos = alpha_neg = 0`` turns the method off (nothing is installed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..engine.attention import grouped_matmul
from ..engine.method import LayerView, RowSet, last_row
from .config import MethodConfig, Number, setting
from .registry import register_method
from ._readout import ReadoutMethod, check_layer_range

__all__ = ["ONLYConfig", "ONLYMethod", "drop_outliers", "only_fuse", "text_visual_entropy_ratio"]


@dataclass(frozen=True)
class ONLYConfig(MethodConfig):
    """Settings of ONLY (SPEC-baselines §5; the official scripts' defaults). Validated on construction.

    Attributes:
        layer: decoder layer whose attention heads build the branch (0).
        alpha_pos: collaborative weight, ``l + alpha_pos * l_cd`` when the branches agree (3; >= 0).
        alpha_neg: contrastive weight, ``(1 + alpha_neg) l - alpha_neg l_cd`` otherwise (1; >= 0).
        gamma: L1 distance threshold between the two distributions (0.2 POPE script; 0.25 CHAIR script).
        beta: plausibility cut-off on the normal logits (0.1; 0 keeps every token).
        residual_mix: weight of the last layer's input added to the branch (0.2, hard-coded officially).
        final_mix: weight of the normal final hidden state added before the LM head (0.5, hard-coded officially).
    """

    name: ClassVar[str] = "only"
    description: ClassVar[str] = "ONLY: one-layer text-biased branch from low-TVER heads, adaptive fusion (ICCV 2025)"

    layer: int = setting(0, "decoder layer whose heads build the text-biased branch", Number(low=0, integer=True))
    alpha_pos: float = setting(3.0, "collaborative weight when the branches agree (0 with alpha_neg 0 = off)",
                               Number(low=0.0))
    alpha_neg: float = setting(1.0, "contrastive weight when they differ", Number(low=0.0))
    gamma: float = setting(0.2, "L1 distance threshold between the two distributions (0.2 POPE, 0.25 CHAIR)",
                           Number(low=0.0))
    beta: float = setting(0.1, "plausibility cut-off: keep tokens with p >= beta * max p (0: all)", Number(0.0, 1.0))
    residual_mix: float = setting(0.2, "weight of the last layer's input in the branch", Number(low=0.0))
    final_mix: float = setting(0.5, "weight of the normal final hidden state before the LM head", Number(low=0.0))


# ------------------------------------------------------------------------------------------- math


def drop_outliers(weights: Tensor, group: Tensor) -> Tensor:
    """`weights` (B, H, K) with every weight of the `group` keys (B, K) above the group's mean + std zeroed.

    Mean and (unbiased) standard deviation are taken per sample and head over the group's keys only; keys outside
    the group are left as they are. `group` may also stack G disjoint groups (G, B, K): each is treated on its own,
    in one pass (the text and the image keys of ONLY).
    """
    g = group[..., None, :]  # (B | G x B, 1, K)
    gf = g.to(weights.dtype)
    n = gf.sum(dim=-1, keepdim=True)
    mean = (weights * gf).sum(dim=-1, keepdim=True) / n.clamp_min(1)
    var = (((weights - mean) ** 2) * gf).sum(dim=-1, keepdim=True) / (n - 1).clamp_min(1)
    outlier = g & (weights > mean + var.sqrt())
    return weights.masked_fill(outlier.any(dim=0) if group.dim() == 3 else outlier, 0.0)


def text_visual_entropy_ratio(weights: Tensor, text: Tensor, image: Tensor) -> Tensor:
    """(B, H) TVER of outlier-zeroed weights (B, H, K): text-key entropy over image-key entropy (both renormalised).

    ``H(p) = -sum p log(p + 1e-6)`` over each group's weights divided by their sum. A group without weight gives NaN
    entropy, read as 0 for text and inf for image (as the official code does).
    """
    w = weights * torch.stack([text, image])[:, :, None, :].to(weights.dtype)  # (2, B, H, K)
    p = w / w.sum(dim=-1, keepdim=True)
    h = -(p * torch.log(p + 1e-6)).sum(dim=-1)  # (2, B, H); NaN for a group without weight
    return torch.nan_to_num(h[0], nan=0.0) / torch.nan_to_num(h[1], nan=float("inf"))


def only_fuse(logits: Tensor, branch: Tensor, alpha_pos: float, alpha_neg: float, gamma: float,
              beta: float) -> tuple[Tensor, Tensor]:
    """ONLY's fusion of normal logits `logits` (B, V) with the branch's `branch` (B, V); returns (scores, d).

    ``d = sum |softmax(l) - softmax(l_cd)|`` per sample; collaborative ``l + alpha_pos l_cd`` when ``d < gamma``,
    else contrastive ``(1 + alpha_neg) l - alpha_neg l_cd``; ``-inf`` where ``l < max l + log(beta)``.
    """
    l, lc = logits.float(), branch.float()
    d = (l.softmax(-1) - lc.softmax(-1)).abs().sum(-1)
    fused = torch.where((d < gamma)[:, None], l + alpha_pos * lc, (1 + alpha_neg) * l - alpha_neg * lc)
    if beta > 0:
        fused = fused.masked_fill(l < l.max(dim=-1, keepdim=True).values + math.log(beta), float("-inf"))
    return fused, d


def _mlp_block(layer: nn.Module, u: Tensor) -> Tensor:
    """``u + MLP(norm(u))`` with the layer's own feed-forward norms (Llama-like or Gemma-like)."""
    if hasattr(layer, "pre_feedforward_layernorm"):
        return u + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(u)))
    return u + layer.mlp(layer.post_attention_layernorm(u))


# ------------------------------------------------------------------------------------------- engine plug


@register_method(ONLYConfig)
class ONLYMethod(ReadoutMethod):
    """Reads the last row's attention at `layer` (no edit), builds the branch there, fuses at the forward's end."""

    def __init__(self, config: ONLYConfig):
        super().__init__()
        self.config = config
        self.name = config.name

    @property
    def enabled(self) -> bool:
        return self.config.alpha_pos > 0 or self.config.alpha_neg > 0

    def resolve(self, num_layers: int) -> None:
        check_layer_range("ONLYConfig.layer", (self.config.layer,), num_layers,
                          f"a model with {num_layers} decoder layers")
        layers = self.adapter.decoder_layers()
        self.last_layer = layers[num_layers - 1]
        self.o_proj = self.adapter.attention_module(layers[self.config.layer]).o_proj

    def layer_inputs(self) -> tuple[int, ...]:
        return (self.num_layers - 1,)

    # the branch: read (never edit) the last row of `layer`
    def rows(self, view: LayerView) -> Tensor | None:
        if not self.enabled or view.layer_idx != self.config.layer or self._step is None or self.paused():
            return None
        return last_row(view)

    def edit_probs(self, view: LayerView, rows: RowSet, probs: Tensor) -> None:
        value = view.value
        if value is None or self._step is None:
            return None
        q_len = view.query_image.shape[1]
        sel = rows.own & (rows.index == q_len - 1)  # (B, R): the last row of each sample with an image
        last = (probs * sel[:, None, :, None].to(probs.dtype)).sum(dim=2)  # (B, H, K)
        text, image = self._key_groups(view)
        zeroed = drop_outliers(last, torch.stack([text, image]))  # disjoint groups: one pass
        tver = text_visual_entropy_ratio(zeroed, text, image)
        off = tver < tver.mean(dim=-1, keepdim=True)
        zeroed = zeroed.masked_fill(off[:, :, None], 0.0)
        heads = grouped_matmul(zeroed[:, :, None, :].to(value.dtype), value)  # (B, H, 1, D)
        flat = heads.transpose(1, 2).reshape(heads.shape[0], 1, -1)
        with torch.no_grad():
            self._step["branch"] = self.o_proj(flat)
        self._step["valid"] = sel.any(dim=1)[:, None]
        call = view.call
        call.report.setdefault(self, []).append(off.sum(dim=-1))
        return None

    def _key_groups(self, view: LayerView) -> tuple[Tensor, Tensor]:
        """(B, K) text keys (real, not image, not the first real token) and (B, K) image keys of the last row."""
        call = view.call
        real = torch.ones_like(call.image_mask)
        if call.prompt_mask is not None:
            real[:, : call.prompt_mask.shape[1]] = call.prompt_mask
        first = real.long().argmax(dim=1)
        pos = torch.arange(call.seq_len, device=real.device)
        real = real & (pos[None, :] != first[:, None])
        kv_len = view.key_pos.shape[0]
        text = call.to_key_slots(real & ~call.image_mask, kv_len)
        visible = (view.key_pos <= view.query_pos[-1])[None, :]
        return text & visible, view.image_keys & visible

    # the branch's hidden state, read out with the forward's own LM head call (its input is norm(h_L))
    def head_rows(self, head_input: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        last = ("in", self.num_layers - 1)
        if "branch" not in states or last not in states:
            return None
        layer = self.last_layer
        residual = states[last][:, -1:]
        u = layer.input_layernorm(states["branch"].to(residual.dtype)) + self.config.residual_mix * residual
        return self.norm(_mlp_block(layer, u)) + self.config.final_mix * head_input[:, -1:]

    # the fusion, at the forward's end
    def rewrite(self, logits: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        if "head" not in states or "valid" not in states:
            return None
        branch = states["head"][:, 0]
        fused, d = only_fuse(logits[:, -1], branch, self.config.alpha_pos, self.config.alpha_neg,
                             self.config.gamma, self.config.beta)
        out = logits.float().clone()
        valid = states["valid"][:, 0]
        out[:, -1] = torch.where(valid[:, None], fused, out[:, -1])
        call = self.call()
        if call is not None:
            call.report.setdefault((self, "d"), []).append(torch.where(valid, d, torch.nan))
        return out

    def summary(self, call: Any) -> dict[str, Any]:
        if not self.enabled:
            return {"active": False, "reason": "alpha_pos = alpha_neg = 0"}
        off = call.report.get(self, [])
        dist = call.report.get((self, "d"), [])
        return {"active": True, "layer": self.config.layer, "steps": len(dist),
                "heads_zeroed_per_step": [t.tolist() for t in off],
                "distance_per_step": [[round(float(x), 4) for x in t.tolist()] for t in dist],
                "collaborative_steps": int(sum(int(((t < self.config.gamma)).sum()) for t in dist))}
