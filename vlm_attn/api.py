"""The public verbs: `apply` methods to a model (and `remove` them), and `steered_generate` with them.

`apply` never subclasses or rewraps the user's model: `model.generate` stays the same function, the language model's
attention implementation name is switched and two hooks are added; `Handle.remove` undoes exactly that.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

from torch import nn

from .engine.engine import Engine
from .methods.registry import build_method, check_unique, config_list_of
from .passes.branch import check_contrast
from .passes.guidance import guidance_settings  # public here: which guidance a list of configs asks for
from .passes.steering import connect as connect_steering
from .patches.base import get_adapter

logger = logging.getLogger(__name__)

HANDLE_ATTR = "_vlm_attn_handle"


class Handle:
    """What `apply` returns: remove the methods, read what they did, or use it as a context manager."""

    def __init__(self, model: nn.Module, engine: Engine, configs: Sequence[Any], processor: Any = None):
        self.model = model
        self.engine = engine
        self.configs = list(configs)
        self.processor = processor  # its tokenizer writes ICD's instruction into the contrast prompt

    @property
    def active(self) -> bool:
        return getattr(self.model, HANDLE_ATTR, None) is self

    def remove(self) -> None:
        """Restore the previous attention implementation and remove the hooks (idempotent)."""
        if not self.active:
            return
        self._final_report = self.engine.report()  # report() after remove() still tells the last call
        self.engine.remove()
        delattr(self.model, HANDLE_ATTR)

    def report(self) -> dict[str, Any]:
        """What each method did during the latest generate/forward call: sinks per layer, rows and heads edited.

        After `remove()` this is the report of the last call made while the methods were applied (logged as such);
        `{}` only when no call ran at all.
        """
        if not self.active:
            final = getattr(self, "_final_report", None)
            if final is None:
                logger.warning("report(): this handle was never applied to a call or was removed by another handle")
                return {}
            logger.warning("report(): the methods were removed; this is the report of the last call before remove()")
            return final
        return self.engine.report()

    def logits_processor(self, inputs: Mapping[str, Any]) -> Any:
        """A `LogitsProcessorList` for one `generate` call on `inputs`: what the applied configs need.

        That is PAI/PAINT's image-free guidance when a config has `guidance=True`, and the contrastive decoder's
        processor (VCD, ICD, M3ID; each with its own second branch) when one is active (VAR alone, or PAI/PAINT with
        guidance off, give an empty list). Pass it to an unchanged
        `model.generate(**inputs, logits_processor=handle.logits_processor(inputs))`, a new one for each call (it
        holds the image-free pass's own cache); `steered_generate` does exactly this.
        """
        from transformers import LogitsProcessorList

        from .passes.branch import branch_processors
        from .passes.guidance import ImageFreeGuidance

        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        contrast = branch_processors(self.model, self.configs, inputs, tokenizer)  # VCD / ICD / M3ID
        settings = guidance_settings(self.configs)
        if settings is None:
            return LogitsProcessorList(contrast)
        gamma, cutoff = settings
        return LogitsProcessorList([ImageFreeGuidance(self.model, inputs, gamma=gamma, cutoff=cutoff), *contrast])

    def generate_kwargs(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """`kwargs` for `model.generate(**inputs, **kwargs)` with this handle's logits processors appended.

        The caller's own `logits_processor`s come first and are kept. Guidance follows one sequence per prompt, so
        beam search and several return sequences are refused here, before anything is generated.
        """
        from transformers import LogitsProcessorList

        if not self.active:
            raise RuntimeError("this handle was removed: apply the methods again before generating with them")
        extra = self.logits_processor(inputs)
        out = dict(kwargs)
        if not extra:
            return out
        config = out.get("generation_config") or getattr(self.model, "generation_config", None)
        for name in ("num_beams", "num_return_sequences"):
            value = out.get(name) or getattr(config, name, None) or 1
            if value > 1:
                raise ValueError(
                    f"PAI/PAINT image-free guidance and VCD/ICD/M3ID run one sequence per prompt, but generate was "
                    f"asked for {name}={value}: use greedy or sampled decoding with one sequence, or set "
                    "guidance=False (PAI/PAINT)"
                )
        out["logits_processor"] = LogitsProcessorList([*(out.get("logits_processor") or []), *extra])
        return out

    def generate(self, **kwargs: Any) -> Any:
        """`model.generate(**kwargs)` plus the logits processors these methods need (PAI/PAINT guidance).

        Takes exactly what `model.generate` takes (processor outputs and generation settings); a `logits_processor`
        passed in is kept and the guidance processor appended to it. `vlm_attn.steered_generate` calls this.
        """
        return self.model.generate(**self.generate_kwargs(kwargs, kwargs))

    def __enter__(self) -> "Handle":
        if not self.active:
            raise RuntimeError(
                "this handle was removed, so `with handle:` would run the model unsteered: apply the methods again "
                "(with vlm_attn.apply(model, configs) as handle: ...)"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(type(c).__name__ for c in self.configs)
        return f"Handle({type(self.model).__name__}, [{names}], active={self.active})"


def apply(model: nn.Module, configs: Any | Iterable[Any], processor: Any = None) -> Handle:
    """Attach one or several attention-method configs (e.g. `VARConfig()`) to `model`; returns a `Handle`.

    `processor` (the model's processor or tokenizer) is needed by ICD only, which writes its instruction into the
    contrast branch's prompt. At most one logits-level decoder runs per call (PAI/PAINT guidance, VCD, ICD, M3ID).

    Methods run in the order of SPEC §6 whatever order they are given in: logit edits, softmax, redistribution.
    Raises `UnsupportedModelError` for a model family vlm-attn does not know, and `ValueError` for a config that
    cannot run on this model (e.g. VAR sink dims unknown) or for two configs of one method.
    """
    if getattr(model, HANDLE_ATTR, None) is not None:
        raise RuntimeError("vlm-attn methods are already applied to this model: call handle.remove() first")
    adapter = get_adapter(model)
    config_list = config_list_of(configs)
    check_unique(config_list)  # two configs of one method would stack their edits
    guidance = guidance_settings(config_list)  # several guidance configs must agree (one guidance pass runs)
    contrast = check_contrast(config_list, guidance is not None, processor)
    methods = [build_method(c) for c in config_list]
    connect_steering(model, adapter, methods)  # VISTA's steering-vector pass
    engine = Engine(model, adapter, methods)
    engine.expects_guidance = guidance is not None or contrast
    try:
        engine.install()
    except Exception:
        engine.remove()  # a method that cannot apply (e.g. a layer out of range) leaves the model as it was
        raise
    handle = Handle(model, engine, config_list, processor)
    setattr(model, HANDLE_ATTR, handle)
    return handle


def remove(model: nn.Module) -> None:
    """Remove whatever `apply` attached to `model` (no-op when nothing is attached)."""
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is not None:
        handle.remove()


def steered_generate(model: nn.Module, **generate_kwargs: Any) -> Any:
    """The one generation path: `model.generate` plus whatever the methods applied to `model` need.

    Every vlm-attn entry point generates through this function (`vlm_attn.generate`, the CLI, the evaluation
    runner, `inspect --answer`; `steered_pipeline` adds the same processors through `Handle.generate_kwargs`), so
    a method runs the same way whichever path is taken. With a handle applied it is `handle.generate(**kwargs)`
    (PAI/PAINT guidance appended to any `logits_processor` given); without one it is plain `model.generate`.
    Takes exactly what `model.generate` takes and returns what it returns.
    """
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is None:
        return model.generate(**generate_kwargs)
    return handle.generate(**generate_kwargs)
