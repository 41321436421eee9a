"""Per-model engine: installs the attention implementation and the position-tracking hooks, holds per-call state.

One `Engine` belongs to one model and one `apply`. It switches only the language model to our implementation
name (the vision tower stays as it was), tracks which absolute positions are image tokens through prefill and
decode with a forward pre-hook on the top model (SPEC §1.4), and restores everything on `remove`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from . import attention
from .method import AttentionMethod, CallState

if TYPE_CHECKING:  # typing only: the engine imports no family
    from ..patches.base import FamilyAdapter

logger = logging.getLogger(__name__)

MODEL_ATTR = "_vlm_attn_engine"  # the installed engine, on the model (read it with `engine_of`)


def _cache_length(kwargs: dict[str, Any]) -> int:
    """Tokens already in the cache handed to this forward (0 without a cache)."""
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except (AttributeError, TypeError):
        return 0


class Engine:
    """Hooks and state for one patched model."""

    def __init__(self, model: nn.Module, adapter: "FamilyAdapter", methods: Sequence[AttentionMethod]):
        self.model = model
        self.adapter = adapter
        self.methods = list(methods)
        self.layers = adapter.decoder_layers()
        self.num_layers = len(self.layers)
        self.call: CallState | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._attn_modules: list[nn.Module] = []
        self._previous_impl: str | None = None
        self.paused = False  # True while an unsteered side pass (PAI's image-free guidance) runs
        # Set by `apply` when a config asks for PAI/PAINT image-free guidance: a decode step of a call whose
        # guidance processor never ran is then reported (report()["guidance"] == "missing") and logged once.
        self.expects_guidance = False
        self.replaying = False  # set by `engine.api.replaying`: prefills re-run the last call's prompts

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Run forwards unsteered and unseen: attention is plain SDPA/eager and the per-call state is untouched.

        PAI's guidance pass runs inside `generate`, between two steered steps; it must not be steered (SPEC §3)
        and must not reset the main call's state (its own cache starts empty, which would look like a new call).
        """
        previous, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = previous

    # ---------------------------------------------------------------- install / remove
    def install(self) -> None:
        """Bind the methods, point each attention module at this engine, add the hooks, switch the implementation."""
        attention.register()
        previous = getattr(self.adapter.text_config(), "_attn_implementation", None) or "eager"
        if previous in (attention.SDPA_NAME, attention.EAGER_NAME):
            raise RuntimeError("this model already carries vlm-attn methods: remove that handle before applying again")
        if previous not in ("eager", "sdpa"):
            logger.warning("attention implementation %r is not supported by vlm-attn; the language model runs on SDPA "
                           "while patched and goes back to %r on remove", previous, previous)
        for method in self.methods:
            method.bind(self.model, self.adapter, self.num_layers)
        self._previous_impl = previous
        self._attn_modules = [self.adapter.attention_module(layer) for layer in self.layers]
        for module in self._attn_modules:
            setattr(module, attention.ENGINE_ATTR, self)
        self._hooks.append(self.model.register_forward_pre_hook(self._top_pre_hook, with_kwargs=True))
        observers = [m for m in self.methods if type(m).observe_layer_input is not AttentionMethod.observe_layer_input]
        if observers:  # only then are the decoder layers hooked
            self._hooks += [layer.register_forward_pre_hook(self._layer_hook(idx, observers), with_kwargs=True)
                            for idx, layer in enumerate(self.layers)]
        self.adapter.set_text_attn_implementation(attention.EAGER_NAME if previous == "eager" else attention.SDPA_NAME)
        setattr(self.model, MODEL_ATTR, self)

    def remove(self) -> None:
        for method in self.methods:
            method.unbind()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self._attn_modules:
            if getattr(module, attention.ENGINE_ATTR, None) is self:
                delattr(module, attention.ENGINE_ATTR)
        self._attn_modules.clear()
        if self._previous_impl is not None:
            self.adapter.set_text_attn_implementation(self._previous_impl)
            self._previous_impl = None
        if getattr(self.model, MODEL_ATTR, None) is self:
            delattr(self.model, MODEL_ATTR)
        self.call = None

    # ---------------------------------------------------------------- hooks
    def _top_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.paused:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        past = _cache_length(kwargs)
        if input_ids is None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                return
            new_mask = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
            if past == 0:
                logger.warning(
                    "vlm-attn: the forward got inputs_embeds without input_ids, so image positions are unknown; "
                    "methods stay inactive for this call. Pass input_ids (model.generate does)."
                )
        else:
            new_mask = self.adapter.image_mask(input_ids, kwargs)
        if past == 0 or self.call is None:
            mask = kwargs.get("attention_mask")
            prompt_mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.shape == new_mask.shape else None
            self.call = CallState(image_mask=new_mask, prompt_mask=prompt_mask, replay=self.replaying)
            missing = ~new_mask.any(dim=1)
            if input_ids is not None and bool(missing.any()):
                logger.warning(
                    "vlm-attn: %d of %d prompt(s) contain no image token; the methods leave them unchanged. "
                    "Put the image in the prompt (processor(images=..., text=...) with the chat template's image slot).",
                    int(missing.sum()),
                    missing.numel(),
                )
        else:
            self.call.extend(new_mask)
            self._check_guidance()

    def mark_guidance(self) -> None:
        """Called by the image-free guidance processor at each step: this call's scores are guided."""
        if self.call is not None:
            self.call.guidance_ran = True

    def _check_guidance(self) -> None:
        """A decode step has started: if guidance is configured, its processor must have run on the first scores."""
        call = self.call
        if not self.expects_guidance or call is None or call.guidance_ran or call.guidance_warned:
            return
        call.guidance_warned = True
        logger.warning(
            "vlm-attn: PAI/PAINT guidance or a contrastive decoder (VCD, ICD, M3ID) is configured but this generate "
            "call has no processor for it, so the output is NOT guided; generate with handle.generate(...) or "
            "vlm_attn.steered_generate(model, ...), or pass logits_processor=handle.logits_processor(inputs) "
            "(guidance=False in the config if unwanted)"
        )

    def _layer_hook(self, idx: int, observers: list[AttentionMethod]):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            call = self.call
            hidden = args[0] if args else kwargs.get("hidden_states")
            if self.paused or call is None or hidden is None or hidden.shape[1] > call.seq_len:
                return
            for method in observers:
                method.observe_layer_input(call, idx, hidden)

        return hook

    # ---------------------------------------------------------------- reports
    def report(self) -> dict[str, Any]:
        """What each method did during the most recent call (plain data), under its name (`name#2`, `name#3`...
        for further instances of one name: each instance keeps its own state)."""
        if self.call is None:
            return {}
        out: dict[str, Any] = {
            "batch_size": int(self.call.image_mask.shape[0]),
            "sequence_length": self.call.seq_len,
            "image_tokens": [int(n) for n in self.call.image_mask.sum(dim=1)],
        }
        if self.expects_guidance:
            out["guidance"] = "applied" if self.call.guidance_ran else (
                "missing" if self.call.guidance_warned else "not reached (no decode step)")
        for method in self.methods:
            name, n = method.name, 1
            while name in out:
                n += 1
                name = f"{method.name}#{n}"
            out[name] = method.summary(self.call)
        return out
