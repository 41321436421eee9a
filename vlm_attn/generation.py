"""`vlm_attn.generate`: generation with the input-level methods (Visual Funnel, ViCrop), SPEC §5.

Input-level methods decide *what the model sees*: one anchoring forward (two for ViCrop) reads where the model
looks, the image is cropped accordingly, and the answer turn carries the original image and the crops. They compose
with the attention methods of SPEC §2-§4 (§6): pass attention configs in `methods` (applied for this call only) or
apply them beforehand with `vlm_attn.apply` (then the anchoring pass and the answer are both steered).

    result = vlm_attn.generate(model, processor, "street.jpg", "What colour is the car?",
                               methods=[vlm_attn.FunnelConfig()], vqa=True)
    result.text, result.entropy, result.boxes, result.attention
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch
from PIL import Image
from torch import nn

from .passes.anchor import AnchorMap, capture_anchor_map, resolve_layer
from .methods.crops import Box, Region
from .methods.funnel import (
    FunnelConfig,
    Portfolio,
    build_anchor_prompt,
    build_answer_prompt,
    crop_portfolio,
    funnel_portfolio,
)
from .methods.vicrop import ViCropConfig, build_attention_prompts, relative_map, vicrop_images, window_search
from .methods.opera import OPERAConfig
from .methods.registry import check_unique
from .passes.opera_search import opera_decoding
from .patches.base import FamilyAdapter, get_adapter
from .prompting import build_inputs, load_image

logger = logging.getLogger(__name__)

ImageLike = Union[str, "os.PathLike[str]", Image.Image]
INPUT_METHODS: tuple[type, ...] = (FunnelConfig, ViCropConfig)
FUNNEL_IMAGE_NAMES = ("original", "focal", "alpha1", "alpha2")


# ------------------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class FunnelDecision:
    """What the Visual Funnel decided for one image: the anchoring map and the entropy-scaled portfolio.

    The map's grid lies over `region` of the image (original pixels, `FamilyAdapter.seen_region`).
    """

    anchor: AnchorMap
    portfolio: Portfolio
    anchor_prompt: str

    @property
    def region(self) -> Region:
        return self.portfolio.region

    @property
    def attention(self) -> torch.Tensor:
        return self.anchor.attention

    @property
    def boxes(self) -> list[Box]:
        return list(self.portfolio.boxes)

    @property
    def entropy(self) -> float:
        return self.portfolio.entropy


@dataclass(frozen=True)
class ViCropDecision:
    """What ViCrop rel-att decided: the question and general maps, their ratio, and the crop box.

    The maps' grid lies over `region` of the image (original pixels, `FamilyAdapter.seen_region`).
    """

    question: AnchorMap
    general: AnchorMap
    relative: torch.Tensor
    box: Box
    bbox_size: int
    prompts: tuple[str, str]
    region: Region

    @property
    def attention(self) -> torch.Tensor:
        return self.relative

    @property
    def boxes(self) -> list[Box]:
        return [self.box]


Decision = Union[FunnelDecision, ViCropDecision]


@dataclass
class GenerationResult:
    """The answer and what the input-level method decided.

    Attributes:
        text: the decoded answer (special tokens removed, stripped).
        method: "funnel", "vicrop", "opera" (OPERA decoding, no input-level method) or "none".
        decision: the method's decision (maps, boxes, entropy), None without an input-level method.
        images: the images of the answer turn, in order (RGB).
        image_names: what each image is ("original", "focal", "alpha1", "alpha2", "crop").
        image_tokens: image tokens in the answer prompt (all images together).
        report: what the attention methods did during the answer (`Handle.report()`), {} without any.
    """

    text: str
    method: str
    decision: Decision | None
    images: list[Image.Image]
    image_names: list[str]
    image_tokens: int
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def attention(self) -> torch.Tensor | None:
        """The ``(gh, gw)`` map the boxes were built from (Funnel: anchoring map; ViCrop: relative map)."""
        return None if self.decision is None else self.decision.attention

    @property
    def boxes(self) -> list[Box]:
        return [] if self.decision is None else self.decision.boxes

    @property
    def entropy(self) -> float | None:
        return self.decision.entropy if isinstance(self.decision, FunnelDecision) else None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data: the text and the decision (maps as nested lists)."""
        out: dict[str, Any] = {"text": self.text, "method": self.method, "images": self.image_names,
                               "image_tokens": self.image_tokens}
        d = self.decision
        if isinstance(d, FunnelDecision):
            p = d.portfolio
            out.update(layer=d.anchor.layer, grid=list(d.anchor.grid.shape), entropy=p.entropy, alpha1=p.alpha1,
                       alpha2=p.alpha2, focal_side=p.focal_side, region=list(p.region),
                       centers=[list(c) for c in p.centers],
                       boxes=[list(b) for b in p.boxes], attention=d.attention.tolist(), steered=d.anchor.steered)
        elif isinstance(d, ViCropDecision):
            out.update(layer=d.question.layer, grid=list(d.question.grid.shape), bbox_size=d.bbox_size,
                       region=list(d.region),
                       boxes=[list(d.box)], attention=d.relative.tolist(), steered=d.question.steered)
        if self.report:
            out["report"] = self.report
        return out


# ------------------------------------------------------------------------------------------- helpers
load_rgb = load_image  # the one image loader (prompting.load_image), under the name this module's callers use


def _inputs(model: nn.Module, processor: Any, images: Sequence[Image.Image], text: str) -> Any:
    return build_inputs(processor, list(images), [text], images_per_prompt=len(images)).to(model.device)


def _count_image_tokens(adapter: FamilyAdapter, batch: Any) -> int:
    return int(adapter.image_mask(batch["input_ids"], dict(batch)).sum())


def _family(adapter: FamilyAdapter) -> str:
    return "/".join(adapter.model_types) or type(adapter).__name__


def _check_turn_size(adapter: FamilyAdapter, count: int, what: str) -> None:
    limit = adapter.max_images_per_turn
    if limit is not None and count > limit:
        raise ValueError(
            f"{_family(adapter)} takes at most {limit} image(s) in one turn, but {what} sends {count}: "
            "input-level methods need several images in one turn on this model"
        )


FALLBACK_HINT = (
    "Fall back with FunnelConfig(fallback='crops_only') (the 3 crops, no original) or "
    "FunnelConfig(fallback='vicrop') (original + focal crop), or use ViCropConfig() (original + 1 crop); "
    "CLI: --funnel-fallback crops_only|vicrop or --method vicrop"
)


def _funnel_selection(adapter: FamilyAdapter, fallback: str) -> tuple[list[int], str | None]:
    """Which of the four portfolio images the answer turn carries: (indices, fallback used or None).

    Checked before the anchoring pass so that a model that cannot take the turn fails fast.
    """
    limit = adapter.max_images_per_turn
    if limit is None or limit >= len(FUNNEL_IMAGE_NAMES):
        return [0, 1, 2, 3], None
    if limit < 2:  # every variant needs two images or more: naming the fallbacks would mislead
        raise ValueError(
            f"{_family(adapter)} takes at most {limit} image(s) in one turn: the Visual Funnel (4 images; its "
            "fallbacks 3 or 2) and ViCrop (2) cannot run on it. Use the attention methods (VAR, PAI, PAINT) instead."
        )
    if fallback == "error":
        raise ValueError(
            f"{_family(adapter)} takes at most {limit} image(s) in one turn and the Visual Funnel sends 4 "
            f"(original + focal + alpha1 + alpha2). {FALLBACK_HINT}."
        )
    indices = [1, 2, 3] if fallback == "crops_only" else [0, 1]
    _check_turn_size(adapter, len(indices), f"fallback {fallback!r}")
    logger.warning("%s takes at most %d image(s) per turn: falling back to %s", _family(adapter), limit, fallback)
    return indices, fallback


# ------------------------------------------------------------------------------------------- deciding
def funnel_decide(
    model: nn.Module, processor: Any, image: ImageLike, question: str, config: FunnelConfig | None = None
) -> FunnelDecision:
    """Contextual anchoring and the entropy-scaled portfolio for one image (no answer is generated).

    The map is laid over the part of the image the processor showed the model (`FamilyAdapter.seen_region`), so
    centroids and boxes are in original-image pixels where the model looked.
    """
    config = config or FunnelConfig()
    adapter = get_adapter(model)
    rgb = load_rgb(image)
    layer = resolve_layer(adapter, config.anchor_layer)
    focal = config.focal_side if config.focal_side is not None else adapter.focal_side()
    prompt = build_anchor_prompt(question, config.anchor_prompt)
    inputs = _inputs(model, processor, [rgb], prompt)
    region = adapter.seen_region(processor, rgb.size, inputs)
    anchor = capture_anchor_map(model, inputs, layer)
    portfolio = funnel_portfolio(anchor.attention, rgb.size, focal, config.entropy_eps, region=region)
    return FunnelDecision(anchor=anchor, portfolio=portfolio, anchor_prompt=prompt)


def vicrop_decide(
    model: nn.Module,
    processor: Any,
    image: ImageLike,
    question: str,
    config: ViCropConfig | None = None,
    vqa: bool = False,
) -> ViCropDecision:
    """ViCrop rel-att: question map / general map at one layer, then the sharpness-ruled window search.

    The maps are laid over the part of the image the processor showed the model (`FamilyAdapter.seen_region`).
    """
    config = config or ViCropConfig()
    adapter = get_adapter(model)
    rgb = load_rgb(image)
    layer = resolve_layer(adapter, config.layer)
    bbox = config.bbox_size if config.bbox_size is not None else adapter.focal_side()
    prompts = build_attention_prompts(question, vqa, config)
    q_inputs = _inputs(model, processor, [rgb], prompts[0])
    region = adapter.seen_region(processor, rgb.size, q_inputs)
    q_map = capture_anchor_map(model, q_inputs, layer)
    g_map = capture_anchor_map(model, _inputs(model, processor, [rgb], prompts[1]), layer)
    relative = relative_map(q_map.raw, g_map.raw, config.eps)
    box = window_search(relative, rgb.size, bbox, config.ratios, region=region)
    return ViCropDecision(question=q_map, general=g_map, relative=relative, box=box, bbox_size=bbox, prompts=prompts,
                          region=region)


# ------------------------------------------------------------------------------------------- generate
def split_methods(methods: Any) -> tuple[Any | None, list[Any]]:
    """(the per-sample config or None, the attention-method configs) from one config or a list.

    The per-sample config is the input-level method (Funnel, ViCrop) or the decoding method (OPERA): either runs
    one prompt per `generate` call. The two kinds do not combine (a clear error).
    """
    items = [] if methods is None else list(methods) if isinstance(methods, (list, tuple)) else [methods]
    check_unique(items)
    decoding = [m for m in items if isinstance(m, OPERAConfig)]
    if decoding:
        rest = [m for m in items if not isinstance(m, OPERAConfig)]
        if any(isinstance(m, INPUT_METHODS) for m in rest):
            raise ValueError("OPERA does not combine with an input-level method (FunnelConfig, ViCropConfig): "
                             "use one of them, with any attention methods")
        return decoding[0], rest
    inputs = [m for m in items if isinstance(m, INPUT_METHODS)]
    if len(inputs) > 1:
        names = ", ".join(type(m).__name__ for m in inputs)
        raise ValueError(f"at most one input-level method per call (FunnelConfig or ViCropConfig), got {names}")
    return (inputs[0] if inputs else None), [m for m in items if not isinstance(m, INPUT_METHODS)]


def decoding_record(methods: Any) -> dict[str, Any]:
    """How `generate` decodes with `methods`: greedy, or a decoding method's beam search (OPERA: its beams)."""
    decoding, _ = split_methods(methods)
    if not isinstance(decoding, OPERAConfig):
        return {"greedy": True, "decoding": "greedy", "num_beams": 1}
    return {"greedy": False, "decoding": "opera beam search", "num_beams": decoding.num_beams}


def batch_decoding_kwargs(model: nn.Module, config: Any) -> dict[str, Any] | None:
    """The `model.generate` kwargs that decode a whole left-padded batch with the decoding method `config` (OPERA's
    beam search), or None when `config` runs one prompt per call: an input-level method, or OPERA while attention
    methods are applied to `model` (a rollback re-runs the batch's prefill, where their edits differ)."""
    from .engine import engine_of

    if not isinstance(config, OPERAConfig):
        return None
    engine = engine_of(model)
    if engine is not None and engine.methods:
        return None
    return {"num_beams": config.num_beams, "custom_generate": opera_decoding, "opera": config}


def generate(
    model: nn.Module,
    processor: Any,
    images: ImageLike | Sequence[ImageLike],
    prompt: str,
    methods: Any = None,
    vqa: bool = False,
    max_new_tokens: int = 64,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Greedy generation on `images` and `prompt`, with input-level and attention methods.

    An `OPERAConfig` in `methods` switches decoding to OPERA's beam search (`vlm_attn.passes.opera_search`); it
    composes with the attention methods (OPERA then reads their steered attention rows).

    Args:
        model, processor: a supported VLM and its processor (`vlm_attn.load_model`).
        images: one image (path or PIL; any mode, converted to RGB) or a list. Input-level methods take one image.
        prompt: the question or instruction.
        methods: configs: at most one input-level method (`FunnelConfig`, `ViCropConfig`) and any attention
            methods (`VARConfig`, ...), the latter applied for this call only (SPEC §6 order). Methods applied
            beforehand with `vlm_attn.apply` stay active for the anchoring pass and the answer.
        vqa: short-answer VQA: appends " Answer the question using a single word or phrase." to the answer prompt
            (and, for ViCrop, to both attention prompts, as its authors do).
        max_new_tokens, generate_kwargs: passed to `vlm_attn.steered_generate` (greedy unless overridden), which adds
            the logits processors the attention methods need (PAI/PAINT guidance) to any given here.

    Returns a `GenerationResult`: text, decision (map, entropy, boxes), the images sent and the attention report.
    Raises ValueError when the model cannot take the images of the answer turn (naming the fallbacks).
    """
    from .api import HANDLE_ATTR, apply, steered_generate

    input_method, attention_configs = split_methods(methods)
    decoding = input_method if isinstance(input_method, OPERAConfig) else None
    if decoding is not None:  # OPERA replaces the decoding loop (model.generate's custom_generate)
        input_method = None
        generate_kwargs = {**generate_kwargs, "num_beams": decoding.num_beams, "custom_generate": opera_decoding,
                           "opera": decoding}
    pictures = list(images) if isinstance(images, (list, tuple)) else [images]
    if not pictures:
        raise ValueError("generate needs at least one image")
    if input_method is not None and len(pictures) != 1:
        raise ValueError(f"{type(input_method).__name__} works on one image, got {len(pictures)}")
    if attention_configs and getattr(model, HANDLE_ATTR, None) is not None:
        raise RuntimeError(
            "attention methods are already applied to this model: pass them either to vlm_attn.apply or in "
            "methods=, not both"
        )
    adapter = get_adapter(model)
    handle = apply(model, attention_configs, processor=processor) if attention_configs else None
    try:
        if isinstance(input_method, FunnelConfig):
            keep, _ = _funnel_selection(adapter, input_method.fallback)
            rgb = load_rgb(pictures[0])
            decision: Decision | None = funnel_decide(model, processor, rgb, prompt, input_method)
            crops = crop_portfolio(rgb, decision.portfolio)
            sent, names = [crops[i] for i in keep], [FUNNEL_IMAGE_NAMES[i] for i in keep]
            text_prompt = build_answer_prompt(prompt, vqa, input_method.vqa_suffix)
            method = "funnel"
        elif isinstance(input_method, ViCropConfig):
            _check_turn_size(adapter, 2, "ViCrop (original + crop)")
            rgb = load_rgb(pictures[0])
            decision = vicrop_decide(model, processor, rgb, prompt, input_method, vqa)
            sent, names = vicrop_images(rgb, decision.box), ["original", "crop"]
            text_prompt = decision.prompts[0]
            method = "vicrop"
        else:
            decision, method = None, "opera" if decoding is not None else "none"
            sent = [load_image(p) for p in pictures]
            names = [f"image{i}" for i in range(len(sent))]
            text_prompt = build_answer_prompt(prompt, vqa)
        batch = _answer_inputs(model, processor, adapter, sent, text_prompt)
        kwargs = {"do_sample": False, **generate_kwargs}
        with torch.no_grad():  # the one generation path: adds PAI / PAINT guidance when a config asks for it
            out = steered_generate(model, **batch, max_new_tokens=max_new_tokens, **kwargs)
        text = processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
        active = handle or getattr(model, HANDLE_ATTR, None)
        report = active.report() if active is not None else {}
    finally:
        if handle is not None:
            handle.remove()
    return GenerationResult(
        text=text, method=method, decision=decision, images=sent, image_names=names,
        image_tokens=_count_image_tokens(adapter, batch), report=report,
    )


def _answer_inputs(
    model: nn.Module, processor: Any, adapter: FamilyAdapter, images: list[Image.Image], text: str
) -> Any:
    """Processor inputs for the answer turn; a processor that refuses several images gets the fallback hint."""
    try:
        return _inputs(model, processor, images, text)
    except (ValueError, TypeError, IndexError) as exc:
        if len(images) == 1:
            raise
        raise ValueError(
            f"the {_family(adapter)} processor could not build one turn with {len(images)} images ({exc}). "
            f"{FALLBACK_HINT}."
        ) from exc
