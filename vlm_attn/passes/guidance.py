"""PAI's image-free logits guidance as a transformers `LogitsProcessor` (SPEC §3), shared by PAI and PAINT.

At each generation step the processor runs its own forward on the prompt *without the image* (built by the family
adapter's `drop_image`), with its own KV cache, feeding the tokens generated so far, and returns

    out = gamma * (logp_img - logp_noimg) + logp_noimg,   out = -inf where logp_img < log(cutoff) + max logp_img.

The image-free pass is never steered: it runs with the model's vlm-attn engine paused (plain attention, and the
main call's per-call state is neither read nor reset). Position ids are passed explicitly, so model-level position
state (Qwen-VL's `rope_deltas`) is left alone.

Every vlm-attn entry point adds it through `vlm_attn.steered_generate` (the one generation path). With an unchanged
`model.generate`, build one processor per call (it holds that call's cache):

    handle = vlm_attn.apply(model, vlm_attn.PAIConfig())
    out = vlm_attn.steered_generate(model, **inputs, max_new_tokens=64)
    # the same with an unchanged generate:
    out = model.generate(**inputs, max_new_tokens=64, logits_processor=handle.logits_processor(inputs))
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import LogitsProcessor

from ..engine import engine_of, unsteered
from ..methods.config import check_nonneg as _check_nonneg, check_open_closed_unit as _check_open_closed_unit
from ..methods.pai import guided_logits
from ..patches.base import FamilyAdapter, get_adapter

__all__ = ["ImageFreeGuidance", "guidance_settings"]


class ImageFreeGuidance(LogitsProcessor):
    """Logits processor that contrasts each step's scores with those of an unsteered, image-free pass.

    Args:
        model: the VLM being generated from (patched by `vlm_attn.apply` or not).
        inputs: the processor outputs handed to `generate` (needs `input_ids`; `attention_mask` and Qwen-VL's
            `mm_token_type_ids` are used when present).
        gamma: guidance strength, >= 0 (1.1 in PAI and PAINT; 1 leaves the image scores, cut-off aside).
        cutoff: plausibility cut-off in (0, 1] (0.1: tokens below 10% of the top image probability are removed).

    The processor expects the `input_ids` that `generate` hands it to start with the prompt it was built from;
    batch expansion (beam search, num_return_sequences > 1) is refused with a clear error.
    """

    def __init__(self, model: nn.Module, inputs: Mapping[str, Any], gamma: float = 1.1, cutoff: float = 0.1):
        if "input_ids" not in inputs or inputs["input_ids"] is None:
            raise ValueError("ImageFreeGuidance needs the prompt's input_ids (the processor outputs given to generate)")
        self.model = model
        self.adapter: FamilyAdapter = get_adapter(model)
        self.gamma = _check_nonneg("gamma", gamma)
        self.cutoff = _check_open_closed_unit("cutoff", cutoff)
        prompt = inputs["input_ids"]
        extra = {k: inputs[k] for k in ("mm_token_type_ids",) if inputs.get(k) is not None}
        free = self.adapter.drop_image(prompt, inputs.get("attention_mask"), **extra)
        self._ids = free.pop("input_ids")
        self._mask = free.pop("attention_mask")
        self._extra = free  # per-token extras of a text-only forward (zeros for the new tokens too)
        self.prompt = prompt
        self.prompt_len = prompt.shape[1]
        self._cache: Any = None
        self._fed = 0  # generated tokens already in the image-free cache

    @contextlib.contextmanager
    def _unsteered(self) -> Iterator[None]:
        with unsteered(self.model), torch.no_grad():
            yield

    def image_free_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits of the image-free prompt followed by the tokens generated so far."""
        batch, total = input_ids.shape
        if batch != self.prompt.shape[0]:
            raise ValueError(
                f"guidance was built for a batch of {self.prompt.shape[0]} but generate runs {batch} sequences: "
                "beam search and num_return_sequences > 1 are not supported with image-free guidance"
            )
        generated = total - self.prompt_len
        if generated < self._fed or generated < 0:
            raise ValueError(
                "guidance received a sequence shorter than its prompt or than the previous step: build one "
                "processor per generate call (handle.logits_processor(inputs))"
            )
        new = input_ids[:, self.prompt_len + self._fed :].to(self._ids.device)
        ones = torch.ones_like(new, dtype=self._mask.dtype)
        if self._cache is None:  # first step: the image-free prompt plus whatever was generated already
            feed = torch.cat([self._ids, new], dim=1)
            extra = {k: torch.cat([v, torch.zeros_like(new, dtype=v.dtype)], dim=1) for k, v in self._extra.items()}
        else:
            feed = new
            extra = {k: torch.zeros_like(new, dtype=v.dtype) for k, v in self._extra.items()}
        if feed.shape[1] == 0:
            raise ValueError("guidance was called twice for the same step")
        self._mask = torch.cat([self._mask, ones], dim=1)
        with self._unsteered():
            out = self.model(
                input_ids=feed,
                attention_mask=self._mask,
                position_ids=self.adapter.text_position_ids(self._mask, feed.shape[1]),
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
        self._cache = out.cache
        self._fed = generated
        return out.logits[:, -1, :]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        free = self.image_free_logits(input_ids).to(scores.device)
        engine = engine_of(self.model)
        if engine is not None:
            engine.mark_guidance()
        return guided_logits(scores, free, self.gamma, self.cutoff).to(scores.dtype)


def guidance_settings(configs: Sequence[Any]) -> tuple[float, float] | None:
    """(gamma, cutoff) of the configs that ask for guidance (PAI or PAINT), or None when none does.

    One generation runs one image-free guidance. Several configs asking for it with different settings would leave
    a record claiming settings that did not run, so that is an error (`vlm_attn.apply` checks it up front).
    """
    wanted = {(type(c).__name__, float(c.gamma), float(c.cutoff)) for c in configs if getattr(c, "guidance", False)}
    settings = {(gamma, cutoff) for _, gamma, cutoff in wanted}
    if len(settings) > 1:
        shown = ", ".join(f"{name}(gamma={g}, cutoff={c})" for name, g, c in sorted(wanted))
        raise ValueError(
            f"one generation runs one image-free guidance, but the configs ask for different ones ({shown}): "
            "give them the same gamma and cutoff, or set guidance=False on all but one"
        )
    return next(iter(settings)) if settings else None
