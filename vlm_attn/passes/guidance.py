"""PAI's image-free logits guidance as a transformers `LogitsProcessor` (SPEC §3), shared by PAI and PAINT.

At each generation step the processor runs its own forward on the prompt *without the image* (built by the family
adapter's `drop_image`), with its own KV cache, feeding the tokens generated so far, and returns

    out = gamma * (logp_img - logp_noimg) + logp_noimg,   out = -inf where logp_img < log(cutoff) + max logp_img.

The image-free pass is one `vlm_attn.passes.branch.SecondBranch` (the mechanism VCD, ICD and M3ID use too).
It is never steered: it runs with the model's vlm-attn engine paused (plain attention, and the
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

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import LogitsProcessor

from ..engine import engine_of
from ..methods.config import check_nonneg as _check_nonneg, check_open_closed_unit as _check_open_closed_unit
from ..methods.pai import guided_logits
from ..patches.base import FamilyAdapter, get_adapter
from .branch import SecondBranch, no_image_prompt

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
        self.prompt = inputs["input_ids"]
        self.prompt_len = self.prompt.shape[1]
        # the image-free copy of the prompt, run as the one second-branch mechanism (its own cache, unsteered)
        self.branch = SecondBranch(model, no_image_prompt(self.adapter, inputs), self.prompt, self.adapter)

    def image_free_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits of the image-free prompt followed by the tokens generated so far."""
        return self.branch.logits(input_ids)

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
