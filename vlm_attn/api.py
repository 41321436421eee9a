"""The public verbs: `apply` methods to a model (and `remove` them), load a model, build prompts.

`apply` never subclasses or rewraps the user's model: `model.generate` stays the same function, the language model's
attention implementation name is switched and two hooks are added; `Handle.remove` undoes exactly that.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from torch import nn

from .engine.engine import Engine
from .methods.registry import build_method
from .patches.base import get_adapter

logger = logging.getLogger(__name__)

HANDLE_ATTR = "_vlm_attn_handle"


class Handle:
    """What `apply` returns: remove the methods, read what they did, or use it as a context manager."""

    def __init__(self, model: nn.Module, engine: Engine, configs: Sequence[Any]):
        self.model = model
        self.engine = engine
        self.configs = list(configs)

    @property
    def active(self) -> bool:
        return getattr(self.model, HANDLE_ATTR, None) is self

    def remove(self) -> None:
        """Restore the previous attention implementation and remove the hooks (idempotent)."""
        if not self.active:
            return
        self.engine.remove()
        delattr(self.model, HANDLE_ATTR)

    def report(self) -> dict[str, Any]:
        """What each method did during the latest generate/forward call: sinks per layer, rows and heads edited."""
        return self.engine.report()

    def logits_processor(self, inputs: Any) -> Any:
        """A `LogitsProcessorList` for this `generate` call: PAI's image-free guidance when a config asks for it.

        Pass it to an unchanged `model.generate(**inputs, logits_processor=handle.logits_processor(inputs))`;
        build a new one for each call (it holds the image-free pass's own cache). The list is empty when no
        config has `guidance=True` (VAR alone, or PAI/PAINT with guidance off). The first PAI/PAINT config with
        guidance sets gamma and the cut-off.
        """
        from transformers import LogitsProcessorList

        from .methods.guidance import ImageFreeGuidance, guidance_settings

        settings = guidance_settings(self.configs)
        if settings is None:
            return LogitsProcessorList()
        gamma, cutoff = settings
        return LogitsProcessorList([ImageFreeGuidance(self.model, inputs, gamma=gamma, cutoff=cutoff)])

    def generate(self, **kwargs: Any) -> Any:
        """`model.generate(**kwargs)` plus the logits processors these methods need (PAI/PAINT guidance).

        Takes exactly what `model.generate` takes (processor outputs and generation settings); a `logits_processor`
        passed in is kept and the guidance processor appended to it.
        """
        from transformers import LogitsProcessorList

        if not self.active:
            raise RuntimeError("this handle was removed: apply the methods again before generating with them")
        extra = self.logits_processor(kwargs)
        if extra:
            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), *extra])
        return self.model.generate(**kwargs)

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(type(c).__name__ for c in self.configs)
        return f"Handle({type(self.model).__name__}, [{names}], active={self.active})"


def _as_list(configs: Any) -> list[Any]:
    if configs is None:
        return []
    if isinstance(configs, (list, tuple)):
        return list(configs)
    return [configs]


def apply(model: nn.Module, configs: Any | Iterable[Any]) -> Handle:
    """Attach one or several attention-method configs (e.g. `VARConfig()`) to `model`; returns a `Handle`.

    Methods run in the order of SPEC §6 whatever order they are given in: logit edits, softmax, redistribution.
    Raises `UnsupportedModelError` for a model family vlm-attn does not know, and `ValueError` for a config that
    cannot run on this model (e.g. VAR sink dims unknown).
    """
    if getattr(model, HANDLE_ATTR, None) is not None:
        raise RuntimeError("vlm-attn methods are already applied to this model: call handle.remove() first")
    adapter = get_adapter(model)
    config_list = _as_list(configs)
    methods = [build_method(c) for c in config_list]
    engine = Engine(model, adapter, methods)
    engine.install()
    handle = Handle(model, engine, config_list)
    setattr(model, HANDLE_ATTR, handle)
    return handle


def remove(model: nn.Module) -> None:
    """Remove whatever `apply` attached to `model` (no-op when nothing is attached)."""
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is not None:
        handle.remove()
