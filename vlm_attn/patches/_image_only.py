"""Processors without their video processor, for families whose processor owns one (SPEC §1, torchvision notes).

Every video processor in transformers 5.2x needs torchvision, and `ProcessorMixin.__init__` refuses a missing
sub-processor, so without torchvision `AutoProcessor` can neither build nor load such a processor. Image and text
calls never touch the video processor, so the processor is built by its class's own `__init__` with the video
processor left out (only the type check of that one argument is skipped): the image token, its id and the other
special tokens come out as `AutoProcessor` would set them (tokenizer attributes such as `image_token` where the
tokenizer has them, the processor config's settings, else the class defaults; real Qwen tokenizers have no
`image_token`), and are checked against the model config's `image_token_id`.

Used for the tiny test models and, through `vlm_attn.loading.load_processor`, for any hub id or local directory of
these families when torchvision is missing (a warning says the video processor is skipped). The tiny models of
`vlm_attn.testing` are saved in the checkpoint layout (tokenizer, image processor, `processor_config.json`,
`chat_template.jinja`), so one loader serves both.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from .base import FamilyAdapter

logger = logging.getLogger(__name__)


def torchvision_hint() -> str:
    """How to install torchvision: the build must match the installed torch."""
    import torch

    return (f"install the torchvision build that matches torch {torch.__version__} (pip install torchvision; for a "
            "CPU-only torch add --index-url https://download.pytorch.org/whl/cpu)")


def assemble_processor(
    processor_class: type, image_processor: Any, tokenizer: Any, chat_template: Any, settings: dict[str, Any]
) -> Any:
    """An instance of `processor_class` built by its own `__init__` with no video processor.

    `ProcessorMixin.__init__` type-checks every sub-processor; the check is skipped for a `None` video processor
    only (through an instance attribute that shadows the method during `__init__`, removed afterwards).
    """
    proc = processor_class.__new__(processor_class)
    check = proc.check_argument_for_proper_class

    def check_all_but_video(name: str, argument: Any) -> Any:
        if name == "video_processor" and argument is None:
            return None
        return check(name, argument)

    proc.check_argument_for_proper_class = check_all_but_video
    try:
        processor_class.__init__(proc, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                 chat_template=chat_template, **settings)
    finally:
        del proc.check_argument_for_proper_class
    return proc


def init_settings(processor_class: type, processor_dict: dict[str, Any]) -> dict[str, Any]:
    """The processor config's entries that `processor_class.__init__` takes (not sub-processors or the template)."""
    params = inspect.signature(processor_class.__init__).parameters
    skip = {"self", "chat_template", *processor_class.get_attributes()}
    return {key: value for key, value in processor_dict.items()
            if key in params and key not in skip and params[key].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}


def config_image_token_id(config: Any) -> int | None:
    """The image token id a model config names (`image_token_id` or LLaVA-style `image_token_index`)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def match_image_token(processor: Any, config: Any) -> None:
    """Make the processor's image token the model config's.

    The token the class derived is kept when it maps to the config's id. When the tokenizer does not know it at
    all, the config's id decides (its token is taken from the vocabulary). Two different known tokens are an error.
    """
    expected = config_image_token_id(config) if config is not None else None
    if expected is None or getattr(processor, "image_token_id", None) == expected:
        return
    tokenizer = processor.tokenizer
    derived, derived_id = getattr(processor, "image_token", None), getattr(processor, "image_token_id", None)
    token = tokenizer.convert_ids_to_tokens(expected)
    if derived_id is not None and derived_id != tokenizer.unk_token_id:
        raise ValueError(
            f"the processor's image token {derived!r} is id {derived_id} but the model config's image_token_id is "
            f"{expected} ({token!r}): the tokenizer and the model config do not belong together"
        )
    logger.info("image token %r (id %d) taken from the model config", token, expected)
    processor.image_token, processor.image_token_id = token, expected


class ImageOnlyProcessorFamily(FamilyAdapter):
    """A family whose processor owns a video processor: loads it without one where torchvision is missing.

    `processor_class_name` is the transformers processor class; `processor_settings` lists the processor's own
    (JSON) settings a tiny model keeps in its `processor_config.json`; `assemble` builds the processor from its parts
    (the class's own `__init__`, SmolVLM overrides); `optional_packages` are the missing packages the image-only
    processor does without.
    """

    processor_class_name: str  # every subclass sets it
    optional_packages: tuple[str, ...] = ("torchvision",)

    @classmethod
    def processor_settings(cls, processor: Any) -> dict[str, Any]:
        """The processor's own settings (not its sub-processors) needed to assemble it again."""
        return {}

    @classmethod
    def assemble(cls, image_processor: Any, tokenizer: Any, chat_template: Any, settings: dict[str, Any]) -> Any:
        """The image-only processor from its parts."""
        import transformers

        return assemble_processor(
            getattr(transformers, cls.processor_class_name), image_processor, tokenizer, chat_template, settings
        )

    @classmethod
    def can_skip(cls, error: Exception) -> bool:
        """Whether `error` (from `AutoProcessor`) names a package the image-only processor does without."""
        text = str(error).lower()
        return any(package in text for package in cls.optional_packages)

    @classmethod
    def load_image_only_processor(cls, name: str, config: Any = None, **hub_kwargs: Any) -> Any:
        """The processor of a hub id or local directory, built without its video processor.

        Reads what `AutoProcessor` reads: the tokenizer, the image processor, the processor config and the chat
        template; the image token is then matched to `config` (the model config) where given.
        """
        import transformers
        from transformers import AutoImageProcessor, AutoTokenizer

        processor_class = getattr(transformers, cls.processor_class_name)
        processor_dict, _ = processor_class.get_processor_dict(name, **hub_kwargs)
        processor = cls.assemble(
            AutoImageProcessor.from_pretrained(name, **hub_kwargs), AutoTokenizer.from_pretrained(name, **hub_kwargs),
            processor_dict.get("chat_template"), init_settings(processor_class, processor_dict),
        )
        match_image_token(processor, config)
        return processor
