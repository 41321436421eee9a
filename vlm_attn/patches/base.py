"""What a model family must tell the engine, and the registry that finds a family from a model.

A family adapter answers: which token ids are image tokens, where the language model's decoder layers and their
attention modules are, how to switch only the language model's attention implementation. Everything a new family
needs is one new file in this folder (and, for tests and demos, a tiny recipe in `vlm_attn/testing/families/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from torch import nn

if TYPE_CHECKING:
    from ..methods.crops import Region

_FAMILIES: dict[str, type["FamilyAdapter"]] = {}


class UnsupportedModelError(ValueError):
    """The model is not a decoder-only VLM family that vlm-attn knows."""


# Known model types that vlm-attn deliberately does not support, and why (read-only).
KNOWN_UNSUPPORTED: Mapping[str, str] = MappingProxyType({
    "mllama": (
        "Llama 3.2 Vision (mllama) feeds the image through cross-attention layers whose keys are all vision patches; "
        "its self-attention sequence holds a single <|image|> marker, not the image tokens. The methods here steer "
        "self-attention between text and image tokens in one sequence, so they have nothing to act on"
    ),
})


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
    if model_type in KNOWN_UNSUPPORTED:
        raise UnsupportedModelError(
            f"vlm-attn does not support model_type {model_type!r}: {KNOWN_UNSUPPORTED[model_type]}. "
            f"Supported families: {', '.join(supported)}."
        )
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


@dataclass(frozen=True)
class ImageGrid:
    """Where one image's spatial token grid sits among a sample's image tokens (for attention maps).

    `start` is the offset of the grid's first token among the sample's image tokens taken in order (the positions
    the engine flags as image tokens); the grid's `gh * gw` tokens follow in row-major order.
    """

    start: int
    shape: tuple[int, int]

    @property
    def cells(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class VisionScores:
    """PAINT's scores of one image at one vision layer, in the language model's image-token order (merged where the
    family merges patches): `cls` = CLS -> patch attention summed over heads (None for CLS-less encoders), `column` =
    attention each token receives, mean over heads and query rows (SPEC §4)."""

    cls: torch.Tensor | None
    column: torch.Tensor


def concat_scores_per_run(run_lengths: list[int], scores: list[VisionScores]) -> list[VisionScores]:
    """Consecutive entries of `scores` joined so that each run of image tokens gets the entries it is made of.

    An entry covers `column.numel()` tokens; entries are taken in order until they cover the run's length. When the
    counts do not add up (no scores, video, precomputed features) `scores` is returned unchanged and PAINT's own
    count check reports the mismatch.
    """
    out: list[VisionScores] = []
    i = 0
    for length in run_lengths:
        parts: list[VisionScores] = []
        covered = 0
        while covered < length and i < len(scores):
            parts.append(scores[i])
            covered += int(scores[i].column.numel())
            i += 1
        if covered != length:
            return scores
        has_cls = all(p.cls is not None for p in parts)
        out.append(VisionScores(
            cls=torch.cat([p.cls for p in parts]) if has_cls else None,  # type: ignore[misc]
            column=torch.cat([p.column for p in parts]),
        ))
    return out if i == len(scores) else scores


@dataclass(frozen=True)
class SinkDimsEntry:
    """A known table row (SPEC §2.1): the sink dims of the text models with this architecture signature.

    Matched on the language model's own shape, not on a checkpoint name, so a checkpoint saved under any folder name
    is found. Checkpoints that share a signature (LLaVA-1.5-7B's language model and Vicuna-7B) share the dims.
    `vocab_sizes` lists every vocabulary size the table's checkpoints ship (the llava-hf conversions pad 32000 to
    32064); a text model with another vocabulary is a different model and does not match.
    """

    label: str
    model_types: tuple[str, ...]
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_sizes: tuple[int, ...]
    dims: tuple[int, ...]

    def matches(self, text_config: Any) -> bool:
        """Whether `text_config` (a language model config) has exactly this signature."""
        return text_signature(text_config) in {
            (t, self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads, self.intermediate_size, v)
            for t in self.model_types
            for v in self.vocab_sizes
        }

    def describe(self) -> str:
        """One line naming the entry and its signature, for VAR's report."""
        return (
            f"known table: {self.label} ({'/'.join(self.model_types)}, {self.hidden_size} hidden, {self.num_layers} "
            f"layers, {self.num_heads} heads, {self.num_kv_heads} kv heads, {self.intermediate_size} intermediate, "
            f"vocab {'/'.join(map(str, self.vocab_sizes))})"
        )


def text_signature(text_config: Any) -> tuple[Any, ...]:
    """(model_type, hidden, layers, heads, kv heads, intermediate, vocab) of a language model config.

    A config without `num_key_value_heads` (or with None) has one kv head per attention head, as transformers reads it.
    """
    heads = getattr(text_config, "num_attention_heads", None)
    kv = getattr(text_config, "num_key_value_heads", None) or heads
    return (
        getattr(text_config, "model_type", None),
        getattr(text_config, "hidden_size", None),
        getattr(text_config, "num_hidden_layers", None),
        heads,
        kv,
        getattr(text_config, "intermediate_size", None),
        getattr(text_config, "vocab_size", None),
    )


class FamilyAdapter:
    """Default behaviour shared by the families; each family file overrides what differs."""

    model_types: ClassVar[tuple[str, ...]] = ()
    # Sink dims (SPEC §2.1) of known language models, matched on their architecture signature.
    known_sink_dims: ClassVar[tuple[SinkDimsEntry, ...]] = ()

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

    def final_norm(self) -> nn.Module:
        """The language model's final norm (applied to the last decoder layer's output before the LM head)."""
        return self.language_model().norm

    def output_head(self) -> nn.Module:
        """The LM head (hidden state -> vocabulary logits): read-outs of early layers (DoLa, VISTA, ONLY) use it."""
        return self.model.get_output_embeddings()

    def set_text_attn_implementation(self, name: str) -> None:
        """Switch only the language model (SPEC §1.3): the vision tower keeps its implementation."""
        self.model.set_attn_implementation({"text_config": name})

    # ------------------------------------------------------------ known tables
    def lookup_sink_dims(self) -> SinkDimsEntry | None:
        """The known-table entry whose architecture signature equals this model's language model, or None.

        The checkpoint's name plays no part: a known model saved under another folder name is found, and a model
        that only shares a name (or a hidden size) with a table entry is not.
        """
        text = self.text_config()
        for entry in self.known_sink_dims:
            if entry.matches(text):
                return entry
        return None

    # ------------------------------------------------------------ input-level methods (Visual Funnel, ViCrop)
    # Published anchor layers by decoder depth (SPEC §5); other depths get about 60% of the depth.
    published_anchor_layers: ClassVar[dict[int, int]] = {}
    # Focal side S in pixels when it is not the vision encoder's input size (Qwen-VL: 224).
    fixed_focal_side: ClassVar[int | None] = None
    # Most images the family takes in one user turn; None when several work.
    max_images_per_turn: ClassVar[int | None] = None

    def anchor_layer(self, num_layers: int) -> int:
        """0-based decoder layer whose last-row attention anchors the Visual Funnel / ViCrop maps."""
        from ..methods.funnel import default_anchor_layer

        return self.published_anchor_layers.get(num_layers, default_anchor_layer(num_layers))

    def focal_side(self) -> int:
        """Focal box side S in original-image pixels: the vision encoder's input size unless the family fixes it."""
        if self.fixed_focal_side is not None:
            return self.fixed_focal_side
        size = getattr(getattr(self.config, "vision_config", None), "image_size", None)
        if isinstance(size, (list, tuple)):
            size = min(size)
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                f"cannot tell the vision encoder's input size of {type(self.model).__name__}: pass focal_side "
                "(FunnelConfig) or bbox_size (ViCropConfig) explicitly"
            )
        return size

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The token grid of image `image_index` of a sample, from the processor outputs `inputs`."""
        raise UnsupportedModelError(
            f"vlm-attn does not know the image-token grid of {self.model_types}: Visual Funnel and ViCrop need it "
            "(add `image_grid` to the family adapter)"
        )

    def seen_region(
        self, processor: Any, image_size: tuple[int, int], inputs: Any = None, image_index: int = 0
    ) -> "Region":
        """Where the picture behind `image_grid(inputs, image_index)` lies on the original image.

        Returns ``(left, top, right, bottom)`` in original-image pixels (floats): the grid's cells tile this
        rectangle evenly, so the Funnel / ViCrop maps, their centroids and boxes, and the `inspect` heatmaps are
        laid over it. It lies inside the image when the processor crops (LLaVA's centre crop) and reaches past the
        image when it pads. `processor` is the model's processor (or its image processor), `image_size` the
        original ``(W, H)``, `inputs` the processor outputs of the prompt (for families whose layout depends on
        them).

        Default: the whole image, for processors that resize the whole picture to the grid's input, aspect ratio
        changed or not: Qwen-VL's smart resize, Gemma 3 and PaliGemma (square resize), the Idefics3 / SmolVLM
        global view and the InternVL thumbnail (the whole image resized to one tile).
        """
        width, height = image_size
        return (0.0, 0.0, float(width), float(height))

    # ------------------------------------------------------------ PAI guidance: the image-free prompt
    def image_free_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """(B, T) bool: the tokens PAI's image-free prompt drops. Default: the image tokens themselves (LLaVA)."""
        return self.image_mask(input_ids, kwargs)

    def pad_token_id(self) -> int:
        """Token id used to left-pad the image-free prompt of a batch (masked out, so any valid id works).

        An id outside the vocabulary is skipped: Idefics3's top-level config defaults to 128002 (Llama 3's), which
        lies outside SmolVLM's 49,280-token vocabulary (its text config says 2).
        """
        vocab = getattr(self.text_config(), "vocab_size", None)
        for cfg in (self.config, self.text_config()):
            value = getattr(cfg, "pad_token_id", None)
            if isinstance(value, int) and 0 <= value < (vocab if isinstance(vocab, int) else value + 1):
                return value
        return 0

    def drop_image(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra: Any
    ) -> dict[str, torch.Tensor]:
        """The same prompt without its image, for PAI's image-free guidance pass (SPEC §3).

        Drops `image_free_mask` tokens (and padding) from each sample and left-pads the batch again, so every
        sample's last prompt token stays in the last column. `extra` takes the other per-token processor outputs
        (e.g. Qwen-VL's `mm_token_type_ids`); families that need them in a text-only forward add them back.
        Returns `input_ids` and `attention_mask` (and family extras), ready for a forward without pixels.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        keep = attention_mask.bool() & ~self.image_free_mask(input_ids, dict(extra, attention_mask=attention_mask))
        lengths = keep.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("a prompt holds nothing but image tokens: the image-free guidance pass needs some text")
        width = int(lengths.max())
        ids = torch.full((input_ids.shape[0], width), self.pad_token_id(), dtype=input_ids.dtype,
                         device=input_ids.device)
        mask = torch.zeros_like(ids)
        for b in range(input_ids.shape[0]):
            n = int(lengths[b])
            ids[b, width - n :] = input_ids[b][keep[b]]
            mask[b, width - n :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def text_position_ids(self, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Position ids of the last `new_tokens` tokens of a text-only sequence with this (left-padded) 2-D mask.

        Passed explicitly in the guidance pass so that no model-level position state is read or written (Qwen-VL
        keeps its M-RoPE `rope_deltas` on the model: computing positions there would clobber the main call's).
        """
        pos = attention_mask.long().cumsum(-1) - 1
        pos = pos.masked_fill(attention_mask == 0, 1)
        return pos[:, -new_tokens:]

    # ------------------------------------------------------------ PAINT: the vision encoder's attention
    def paint_capture(self, sink: Callable[[str, list["VisionScores"]], None]) -> list[Any]:
        """Install hooks that report PAINT's per-image scores of the first and the feature vision layer.

        `sink(kind, scores)` is called with kind "first" or "feature" and one `VisionScores` per image, in the order
        the images appear in the batch, at each vision forward. Returns removables (objects with `.remove()`).
        """
        raise UnsupportedModelError(
            f"PAINT does not know the vision encoder of {self.model_types}: add `paint_capture` to its family adapter"
        )

    def paint_group_scores(self, run_lengths: list[int], scores: list["VisionScores"]) -> list["VisionScores"]:
        """The vision scores regrouped to one entry per run of image tokens (runs of the batch in order).

        Default: each encoded image is one run (LLaVA, Qwen-VL, Gemma 3, Idefics3 tiles). Families whose run holds
        several encoder entries (InternVL tiles, PaliGemma's back-to-back images) concatenate them
        (`concat_scores_per_run`).
        """
        return scores

    def paint_image_positions(self, run: torch.Tensor, num_scores: int) -> torch.Tensor:
        """LM positions of the `num_scores` scored tokens of one image, given its run of image positions.

        Default: one LM image token per (merged) patch, in order, starting at the first image token (LLaVA, Qwen-VL).
        """
        if run.numel() < num_scores:
            raise ValueError(f"an image has {run.numel()} LM image tokens but its vision scores cover {num_scores}")
        return run[:num_scores]
