"""Loading a family's processor: `AutoProcessor`, or the family's image-only processor where only torchvision
(or another optional package of the video processor) is missing. `vlm_attn.loading.load_processor` is this."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def missing_package_message(name: str, exc: Exception) -> str:
    """One line for a processor that cannot load because a package is missing (torchvision: how to install it)."""
    from ._image_only import torchvision_hint

    if "torchvision" in str(exc).lower():
        return (f"the processor of {name!r} owns a video processor, which needs torchvision, and torchvision is not "
                f"installed: {torchvision_hint()}")
    return f"the processor of {name!r} needs a package that is not installed: {one_line(exc)}"


def load_processor(name: str, config: Any = None, **hub_kwargs: Any) -> Any:
    """The processor of a hub id or local directory: `AutoProcessor`, or, where it fails only for want of
    torchvision (SmolVLM: or num2words), the family's image-only processor, with a warning that the video
    processor is skipped (images and text work as with the full processor; SPEC §1).

    `config` is the model config (read from `name` when not given): it names the family and the image token id.
    A missing package with no image-only processor for the family is an `ImportError` that says what to install.
    """
    from transformers import AutoConfig, AutoProcessor

    from . import _load_all  # noqa: F401
    from ._image_only import ImageOnlyProcessorFamily
    from .base import _FAMILIES

    try:
        return AutoProcessor.from_pretrained(name, **hub_kwargs)
    except (ImportError, ValueError) as exc:
        # transformers reports a missing torchvision as ImportError (video processor class) or ValueError (auto class)
        if isinstance(exc, ValueError) and "torchvision" not in str(exc).lower():
            raise
        config = config if config is not None else AutoConfig.from_pretrained(name, **hub_kwargs)
        family = _FAMILIES.get(getattr(config, "model_type", None))
        if not (isinstance(family, type) and issubclass(family, ImageOnlyProcessorFamily) and family.can_skip(exc)):
            raise ImportError(missing_package_message(name, exc)) from exc
        missing = [p for p in family.optional_packages if p in str(exc).lower()]
        logger.warning(
            "%s not installed: the processor of %s is loaded without its video processor (images and text work; "
            "videos need the full processor: pip install %s)", " / ".join(missing), name, " ".join(missing),
        )
        return family.load_image_only_processor(name, config, **hub_kwargs)
