"""VISTA's steering-vector pass: two unsteered prefills per prompt, with and without the image (SPEC-baselines §4).

``v_l = h_pos^l - h_neg^l``: the output of decoder layer l at the prompt's last position, once for the prompt as
given (the positive input: exactly what `generate` prefills) and once for the same text with the image block
removed by the family adapter's `drop_image` (the negative input). Both run with the engine paused (no method edits
them, the main call's state is untouched) and without a cache; the negative one gets explicit text positions, so
model-level position state (Qwen-VL's `rope_deltas`) is left alone, as in PAI's guidance pass.

`connect(model, adapter, methods)` hands this pass to every method that asks for it (`vector_source`); `vlm_attn.apply`
calls it before the methods are bound.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..engine import unsteered
from ..patches.base import FamilyAdapter

__all__ = ["connect", "steering_vectors"]

# forward arguments of the prefill that must not reach the uncached passes (no loss either)
_CACHE_KEYS = ("cache", "past_key_values", "use_cache", "logits_to_keep", "cache_position", "labels")


def _last_outputs(model: nn.Module, adapter: FamilyAdapter, kwargs: dict[str, Any]) -> Tensor:
    """(L, B, D) output of each decoder layer at the last position, for one unsteered, uncached forward."""
    outs: list[Tensor | None] = [None] * len(adapter.decoder_layers())

    def keeper(idx: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            outs[idx] = hidden[:, -1].detach()

        return hook

    hooks = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(adapter.decoder_layers())]
    try:
        with unsteered(model), torch.no_grad():
            model(**kwargs, use_cache=False, logits_to_keep=1)
    finally:
        for hook in hooks:
            hook.remove()
    if any(o is None for o in outs):
        raise RuntimeError("VISTA's steering pass did not reach every decoder layer")
    return torch.stack(outs)  # type: ignore[arg-type]


def steering_vectors(model: nn.Module, adapter: FamilyAdapter, kwargs: dict[str, Any]) -> Tensor:
    """(L, B, D) float32 visual steering vectors of the prompt batch that the forward `kwargs` prefill."""
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("VISTA needs the prompt's input_ids to build its image-free prompt (pass input_ids, as "
                         "model.generate does, not inputs_embeds)")
    positive = {k: v for k, v in kwargs.items() if k not in _CACHE_KEYS}
    extra = {k: kwargs[k] for k in ("mm_token_type_ids",) if kwargs.get(k) is not None}
    free = adapter.drop_image(input_ids, kwargs.get("attention_mask"), **extra)
    free["position_ids"] = adapter.text_position_ids(free["attention_mask"], free["input_ids"].shape[1])
    pos = _last_outputs(model, adapter, positive)
    neg = _last_outputs(model, adapter, free)
    return pos.float() - neg.float()


def connect(model: nn.Module, adapter: FamilyAdapter, methods: Sequence[Any]) -> None:
    """Give each method with a `vector_source` slot (VISTA) this model's steering-vector pass."""
    for method in methods:
        if hasattr(method, "vector_source"):
            method.vector_source = functools.partial(steering_vectors, model, adapter)
