"""VISTA: visual steering vector + self-logits augmentation (Li et al., ICML 2025). SPEC-baselines §4.

Two parts, both inside the normal forward (no extra pass per token):

* **Visual steering vector (VSV).** Before a prompt is prefilled, its last position is read at every decoder
  layer's output twice, unsteered: with the image and with the same text without it (two prefills per prompt, run
  by :mod:`vlm_attn.passes.steering`). ``v_l = h_pos^l - h_neg^l`` is the layer's visual direction. At every
  position of the prefill and of each decode step, the output ``m`` of each steered layer's MLP (before the residual
  add, as the official code does) is rotated toward it, keeping its norm:

      s = 1 + max(0, cos(m, -v_l)),   m' = ||m|| * normalize(normalize(m) + strength * s * normalize(v_l)).

* **Self-logits augmentation (SLA).** The logits are mixed with the LM head's read-out of a window of late layers:
  ``logits = mix * mean_{i in window} lm_head(H_i) + (1 - mix) * logits`` where ``H_i`` is the output of decoder
  layer i, read without the final norm like the official code (``sla_norm`` adds it). The LM head is linear, so the
  mix is applied to the final norm's output and read out by the model's own head call: the same value, with no
  extra projection (a soft-capped head, Gemma 2, is not linear: there the logits are mixed after the forward).

Where we differ from the official code: the rank-1 PCA it fits to one difference is degenerate (the centred matrix
is zero) and adds an arbitrary unit vector over all layers' coordinates; we use the difference itself. The rotated
MLP output keeps the model's dtype (the official layer always returns fp16). Vectors are per sample, so batches work
(the official code runs batch 1). Defaults are LLaVA-1.5-7B's CHAIR settings (strength 0.17; POPE used 0.01), SLA
mix 0.3 over the outputs of layers 25..30 of 32, i.e. ``L-7 .. L-2`` for a model of L layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Bool, Layers, MethodConfig, Number, setting
from .registry import register_method
from ._readout import ReadoutMethod, check_layer_range

__all__ = ["VISTAConfig", "VISTAMethod", "default_sla_layers", "sla_logits", "steer_mlp_output"]


@dataclass(frozen=True)
class VISTAConfig(MethodConfig):
    """Settings of VISTA (SPEC-baselines §4). Validated on construction.

    Attributes:
        strength: steering weight lambda, >= 0 (0.17 LLaVA-1.5 CHAIR, 0.01 POPE; 0 = no steering, no extra pass).
        steer_layers: decoder layers whose MLP output is steered; None = every layer.
        sla_mix: SLA mixing ratio gamma in [0, 1] (0.3; 0 = no SLA).
        sla_layers: decoder layers whose outputs SLA averages; None = ``L-7 .. L-2`` (25..30 of 32).
        sla_norm: apply the final norm to those outputs before the LM head (the official code does not).
    """

    name: ClassVar[str] = "vista"
    description: ClassVar[str] = "VISTA: visual steering vector on MLP outputs + early-layer logits mix (ICML 2025)"

    strength: float = setting(0.17, "steering weight lambda (0.17 CHAIR, 0.01 POPE; 0 = off)", Number(low=0.0))
    steer_layers: tuple[int, ...] | None = setting(None, "decoder layers to steer, e.g. 0,1 (default all)", Layers())
    sla_mix: float = setting(0.3, "self-logits augmentation mix gamma in [0, 1] (0 = off)", Number(0.0, 1.0))
    sla_layers: tuple[int, ...] | None = setting(None, "layers whose outputs SLA averages (default L-7..L-2)",
                                                 Layers())
    sla_norm: bool = setting(False, "apply the final norm before reading out SLA layers (official: no)", Bool())


# ------------------------------------------------------------------------------------------- math


def default_sla_layers(num_layers: int) -> tuple[int, ...]:
    """``L-7 .. L-2`` (0-based, inclusive): the official 25..30 for 32 layers; from layer 0 in shallow models."""
    return tuple(range(max(0, num_layers - 7), max(1, num_layers - 1)))


def steer_mlp_output(m: Tensor, v: Tensor, strength: float, unit: bool = False) -> Tensor:
    """VISTA's norm-preserving rotation of MLP outputs `m` (..., D) toward the direction `v` (broadcasting).

    ``s = 1 + relu(cos(m, -v))``; ``m' = ||m|| * normalize(normalize(m) + strength * s * normalize(v))``, computed
    in float32 and returned in `m`'s dtype. `unit`: `v` is already a unit vector (the method normalises each
    layer's vector once per prompt, not at every step).
    """
    m32 = m.float()
    v_hat = v.float().to(m.device)
    if not unit:
        v_hat = F.normalize(v_hat, dim=-1)
    norm = m32.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    m_hat = m32 / norm
    cos = torch.linalg.vecdot(m_hat, v_hat, dim=-1).unsqueeze(-1)  # cos(m, v) = -cos(m, -v)
    coef = torch.add(strength, cos.clamp(max=0.0), alpha=-strength)  # strength * (1 + relu(-cos))
    d = torch.addcmul(m_hat, coef, v_hat)
    return (d * (norm / d.norm(dim=-1, keepdim=True).clamp_min(1e-12))).to(m.dtype)


def sla_logits(final_logits: Tensor, window_logits: Tensor, mix: float) -> Tensor:
    """``mix * window_logits + (1 - mix) * final_logits`` in float32 (`window_logits`: the window's mean read-out).

    The same mix applies to hidden states before a linear LM head (the method mixes there when it can)."""
    return mix * window_logits.float() + (1.0 - mix) * final_logits.float()


# ------------------------------------------------------------------------------------------- engine plug


def _cache_length(kwargs: dict[str, Any]) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    try:
        return 0 if cache is None else int(cache.get_seq_length())
    except (AttributeError, TypeError):
        return 0


@register_method(VISTAConfig)
class VISTAMethod(ReadoutMethod):
    """Steers MLP outputs with the prompt's visual vectors and mixes late-layer read-outs into the logits.

    `vector_source(kwargs) -> (L, B, D)` computes the vectors of a prefill from its forward kwargs; `vlm_attn.apply`
    connects it (:mod:`vlm_attn.passes.steering`). It runs at each forward that starts from an empty cache.
    """

    def __init__(self, config: VISTAConfig):
        super().__init__()
        self.config = config
        self.name = config.name
        self.vector_source: Callable[[dict[str, Any]], Tensor] | None = None
        self.vectors: Tensor | None = None  # (L, B, D) of the call now running
        self.directions: Tensor | None = None  # the same, as unit vectors
        self.steered: tuple[int, ...] = ()
        self.window: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.config.strength > 0 or self.config.sla_mix > 0

    def resolve(self, num_layers: int) -> None:
        what = f"a model with {num_layers} decoder layers"
        steer = self.config.steer_layers
        self.steered = () if self.config.strength == 0 else (
            tuple(range(num_layers)) if steer is None else check_layer_range("VISTAConfig.steer_layers", steer,
                                                                             num_layers, what))
        window = self.config.sla_layers
        self.window = () if self.config.sla_mix == 0 else (
            default_sla_layers(num_layers) if window is None else check_layer_range("VISTAConfig.sla_layers", window,
                                                                                    num_layers, what))
        self.reads_final = num_layers - 1 in self.window
        # The LM head is linear, so mixing read-outs equals reading out the mixed hidden state: the mix is done on
        # the final norm's output and the model's own head call reads it out (no extra pass over the head's weight).
        # A soft-capped head (Gemma 2) is not linear: there the logits are mixed after the forward.
        self.hidden_sla = getattr(self.adapter.text_config(), "final_logit_softcapping", None) is None
        if self.steered and self.vector_source is None:
            raise ValueError("VISTA's steering needs its steering-vector pass: apply it with vlm_attn.apply(model, "
                             "VISTAConfig(...)), which connects the pass")

    def layer_inputs(self) -> tuple[int, ...]:
        return tuple(i + 1 for i in self.window if i + 1 < self.num_layers)

    def bind(self, model: nn.Module, adapter: Any, num_layers: int) -> None:
        super().bind(model, adapter, num_layers)
        layers = adapter.decoder_layers()
        for idx in self.steered:
            self._hooks.append(layers[idx].mlp.register_forward_hook(self._steerer(idx)))
        if self.window and self.hidden_sla:
            self._hooks.append(self.norm.register_forward_hook(self._mix_hidden))

    def unbind(self) -> None:
        super().unbind()
        self.vectors = self.directions = None

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.paused():
            return
        if self.steered and _cache_length(kwargs) == 0:
            assert self.vector_source is not None  # checked at bind
            self.vectors = None
            full = dict(kwargs)
            if args and "input_ids" not in full:
                full["input_ids"] = args[0]
            self.vectors = self.vector_source(full)
            self.directions = F.normalize(self.vectors, dim=-1)
        super()._begin(module, args, kwargs)

    def _steerer(self, idx: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            if self.vectors is None or self.paused() or not isinstance(output, Tensor):
                return None
            v = self.directions[idx]
            if v.shape[0] != output.shape[0]:
                raise ValueError(f"VISTA's steering vectors were made for a batch of {v.shape[0]} but the forward "
                                 f"runs {output.shape[0]} rows: start each generate from its prompt")
            return steer_mlp_output(output, v[:, None, :], self.config.strength, unit=True)

        return hook

    def _window_keys(self) -> list[Any]:
        return [("in", i + 1) if i + 1 < self.num_layers else "final" for i in self.window]

    def _mix_hidden(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        """SLA on the final norm's output: ``mix * mean_i H_i + (1 - mix) * norm(h_L)`` at the kept positions."""
        step = self._step
        if step is None or "sla" in step or self.paused() or not isinstance(output, Tensor):
            return None
        step["sla"] = True  # the forward's own norm call only (read-outs may call the norm again)
        keys = self._window_keys()
        if any(k not in step for k in keys):
            return None
        n = step[keys[0]].shape[1]
        with torch.no_grad():
            window = torch.stack([(self.norm(step[k]) if self.config.sla_norm else step[k]).float()
                                  for k in keys]).mean(dim=0)
        out = output.clone()
        out[:, -n:] = sla_logits(output[:, -n:], window, self.config.sla_mix).to(output.dtype)
        return out

    def rewrite(self, logits: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        if not self.window or self.hidden_sla:
            return None
        keys = self._window_keys()
        if any(k not in states for k in keys):
            return None
        if self.config.sla_norm:
            window = torch.stack([self.read_out(states[k], True) for k in keys]).mean(dim=0)
        else:
            mean = torch.stack([states[k].float() for k in keys]).mean(dim=0)
            window = self.read_out(mean.to(self.head.weight.dtype), False)
        return sla_logits(logits, window, self.config.sla_mix)

    def summary(self, call: Any) -> dict[str, Any]:
        if not self.enabled:
            return {"active": False, "reason": "strength = 0 and sla_mix = 0"}
        out: dict[str, Any] = {"active": True, "strength": self.config.strength, "steered_layers": list(self.steered),
                               "sla_mix": self.config.sla_mix, "sla_layers": list(self.window)}
        if self.vectors is not None:
            out["vector_norms"] = [[round(float(x), 4) for x in row] for row in self.vectors.norm(dim=-1).tolist()]
        return out
