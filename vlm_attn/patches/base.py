"""What a model family must tell the engine, and the registry that finds a family from a model.

A family adapter answers: which token ids are image tokens, where the language model's decoder layers and their
attention modules are, how to switch only the language model's attention implementation, and how to build a
tiny random model of the family for tests and demos. Everything a new family needs is one new file in this folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

_FAMILIES: dict[str, type["FamilyAdapter"]] = {}


class UnsupportedModelError(ValueError):
    """The model is not a decoder-only VLM family that vlm-attn knows."""


def register_family(cls: type["FamilyAdapter"]) -> type["FamilyAdapter"]:
    """Class decorator: make an adapter reachable by each of its `model_types`."""
    for model_type in cls.model_types:
        _FAMILIES[model_type] = cls
    return cls


def supported_families() -> list[str]:
    """The `config.model_type` values vlm-attn supports."""
    from . import _load_all  # noqa: F401  (imports every family file)

    return sorted(_FAMILIES)


def get_adapter(model: nn.Module) -> "FamilyAdapter":
    """The adapter for `model`, or an error that names the supported families."""
    supported = supported_families()
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(
            f"vlm-attn does not support model_type {model_type!r} ({type(model).__name__}). "
            f"Supported families: {', '.join(supported)}. Load the model with AutoModelForImageTextToText."
        )
    adapter = _FAMILIES[model_type](model)
    if not adapter.image_token_ids():
        raise UnsupportedModelError(
            f"{type(model).__name__} has no image token id in its config (image_token_id / image_token_index), "
            "so vlm-attn cannot find the image positions."
        )
    return adapter


@dataclass
class TinySpec:
    """How to build a tiny random model of a family: config, processor, and the weight scale to redraw with."""

    config: Any
    processor: Any
    model_class: type
    lm_std: float = 0.15
    other_std: float = 0.1


class FamilyAdapter:
    """Default behaviour shared by the families; each family file overrides what differs."""

    model_types: ClassVar[tuple[str, ...]] = ()
    # Sink dims (SPEC §2.1) of known checkpoints: substring of the hub id -> (hidden size, dims).
    known_sink_dims: ClassVar[dict[str, tuple[int, tuple[int, ...]]]] = {}

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # ------------------------------------------------------------ image tokens
    def image_token_ids(self) -> list[int]:
        ids = []
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(self.config, attr, None)
            if isinstance(value, int) and value not in ids:
                ids.append(value)
        return ids

    def image_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """(B, T) bool: which of these input ids are image tokens."""
        ids = torch.tensor(self.image_token_ids(), device=input_ids.device)
        return torch.isin(input_ids, ids)

    # ------------------------------------------------------------ language model structure
    def text_config(self) -> Any:
        return self.config.get_text_config()

    def language_model(self) -> nn.Module:
        inner = getattr(self.model, "model", self.model)
        return inner.language_model

    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model().layers

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def set_text_attn_implementation(self, name: str) -> None:
        """Switch only the language model (SPEC §1.3): the vision tower keeps its implementation."""
        self.model.set_attn_implementation({"text_config": name})

    # ------------------------------------------------------------ known tables
    def lookup_sink_dims(self) -> tuple[int, ...] | None:
        """Sink dims from the known table, matched on the checkpoint name and checked against the hidden size."""
        name = (getattr(self.config, "_name_or_path", "") or "").lower()
        hidden = getattr(self.text_config(), "hidden_size", None)
        for key, (size, dims) in self.known_sink_dims.items():
            if key in name and size == hidden:
                return dims
        return None

    # ------------------------------------------------------------ tiny test models
    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        """A tiny random model of this family (config + real processor) built offline."""
        raise UnsupportedModelError(f"no tiny model recipe for {cls.model_types}")

    @classmethod
    def save_tiny_processor(cls, processor: Any, path: Any) -> None:
        processor.save_pretrained(path)

    @classmethod
    def load_tiny_processor(cls, path: str) -> Any:
        """Load the processor saved beside a tiny model (families whose processor needs torchvision override)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)
