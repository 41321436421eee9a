"""The one "second branch": a copy of the prompt that the model also decodes, with its own KV cache, never steered.

A second branch is what PAI's image-free guidance and the contrastive decoders (VCD, ICD, M3ID) share: next to the
main generation, the model runs a *variant* of each prompt (without its image, with a noised image, or with a
disturbed instruction), feeds it the tokens the main branch generated, and the method combines both next-token
logits. Here:

* `BranchPrompt` is the variant prompt as tensors (left-padded, like the main prompt), made by one of
  `no_image_prompt`, `noised_image_prompt` or `prefixed_prompt`;
* `SecondBranch` runs it: a prefill on the first step, then one token per step on its own cache, with the model's
  vlm-attn engine paused (plain attention; the main call's state is neither read nor reset) and the model's own
  position state (Qwen-VL's `rope_deltas`) swapped in and out, so that the main call never sees the branch;
* `ContrastProcessor` is the transformers `LogitsProcessor` that asks the branch for its logits at each step and
  hands both to a config's pure `combine(scores, branch_logits, step)` rule (`vlm_attn.methods.vcd` etc.).

The branch is an extra forward per step (batch B), not extra rows of the main forward: `model.generate` owns the
main forward and its cache, and keeping it unchanged is the package's contract. `branch_processors` builds the
processors a list of configs asks for; `Handle.logits_processor` calls it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import LogitsProcessor

from ..engine import engine_of, unsteered
from ..errors import UserError
from ..patches.base import FamilyAdapter, get_adapter

__all__ = [
    "BranchPrompt", "ContrastProcessor", "SecondBranch", "branch_processors", "check_contrast", "contrast_configs",
    "no_image_prompt", "noised_image_prompt", "prefixed_prompt", "prompt_tensors",
]

_MAIN_KEYS = ("input_ids", "attention_mask")
_NOT_INPUTS = ("labels",)  # PaliGemma's processor returns training labels: a forward given them computes a loss


@dataclass
class BranchPrompt:
    """The variant prompt of a second branch, as tensors.

    Attributes:
        input_ids, attention_mask: (B, T') left-padded prompt of the branch.
        per_token: other (B, T') processor outputs aligned with `input_ids` (Qwen-VL's `mm_token_type_ids`, Gemma's
            `token_type_ids`); the generated tokens get zeros (they are text).
        prefill: inputs the branch's first forward also takes (pixel values, image sizes, grids); empty without image.
        text_only: the branch holds no image (positions are then plain text positions, passed explicitly).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)
    prefill: dict[str, Any] = field(default_factory=dict)
    text_only: bool = True


def prompt_tensors(inputs: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                       dict[str, Any]]:
    """Split generate's inputs into (input_ids + attention_mask, per-token extras, prefill-only tensors).

    Only tensors are model inputs here (generation settings such as `max_new_tokens` are skipped). A 2-D tensor of
    the prompt's shape is per-token; every other tensor (pixels, grids, image sizes) is for the prefill.
    """
    ids = inputs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise ValueError("a second branch needs the prompt's input_ids (B, T): the processor outputs given to generate")
    mask = inputs.get("attention_mask")
    main = {"input_ids": ids, "attention_mask": mask if isinstance(mask, torch.Tensor) else torch.ones_like(ids)}
    per_token, prefill = {}, {}
    for key, value in inputs.items():
        if key in _MAIN_KEYS or key in _NOT_INPUTS or not isinstance(value, torch.Tensor):
            continue
        if value.shape == ids.shape:
            per_token[key] = value
        else:
            prefill[key] = value
    return main, per_token, prefill


def no_image_prompt(adapter: FamilyAdapter, inputs: Mapping[str, Any]) -> BranchPrompt:
    """The prompt without its image tokens (the family's `drop_image`), re-left-padded; no pixels (PAI, M3ID)."""
    main, per_token, _ = prompt_tensors(inputs)
    extra = {k: v for k, v in per_token.items() if k == "mm_token_type_ids"}
    free = adapter.drop_image(main["input_ids"], inputs.get("attention_mask"), **extra)
    ids, mask = free.pop("input_ids"), free.pop("attention_mask")
    return BranchPrompt(ids, mask, per_token=free, prefill={}, text_only=True)


def noised_image_prompt(inputs: Mapping[str, Any], noise: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor],
                        key: str = "pixel_values") -> BranchPrompt:
    """The same prompt with `noise(pixel_values, inputs)` in place of the pixels (VCD's distorted image)."""
    main, per_token, prefill = prompt_tensors(inputs)
    if key not in prefill:
        raise UserError(f"this method distorts the image, but generate got no {key}: pass the processor outputs of "
                        "a prompt with an image")
    prefill = dict(prefill)
    prefill[key] = noise(prefill[key], inputs)
    return BranchPrompt(main["input_ids"], main["attention_mask"], per_token=dict(per_token), prefill=prefill,
                        text_only=False)


def prefixed_prompt(inputs: Mapping[str, Any], prefix: torch.Tensor, skip_first: int | None) -> BranchPrompt:
    """The prompt with the token ids `prefix` inserted before each sample's first real token, or after it when that
    token is `skip_first` (the tokenizer's BOS): ICD's disturbed instruction. Re-left-padded; the image stays."""
    main, per_token, prefill = prompt_tensors(inputs)
    ids, mask = main["input_ids"], main["attention_mask"].bool()
    prefix = prefix.to(device=ids.device, dtype=ids.dtype).reshape(-1)
    rows_ids, rows_extra = [], {k: [] for k in per_token}
    for b in range(ids.shape[0]):
        real = ids[b][mask[b]]
        at = 1 if skip_first is not None and real.numel() and int(real[0]) == skip_first else 0
        rows_ids.append(torch.cat([real[:at], prefix, real[at:]]))
        for k, v in per_token.items():
            row = v[b][mask[b]]
            rows_extra[k].append(torch.cat([row[:at], torch.zeros(prefix.numel(), dtype=v.dtype, device=v.device),
                                            row[at:]]))
    width = max(r.numel() for r in rows_ids)
    pad = int(ids[~mask][0]) if bool((~mask).any()) else 0
    out_ids = torch.full((ids.shape[0], width), pad, dtype=ids.dtype, device=ids.device)
    out_mask = torch.zeros((ids.shape[0], width), dtype=main["attention_mask"].dtype, device=ids.device)
    out_extra = {k: torch.zeros((ids.shape[0], width), dtype=v.dtype, device=v.device) for k, v in per_token.items()}
    for b, row in enumerate(rows_ids):
        out_ids[b, width - row.numel():] = row
        out_mask[b, width - row.numel():] = 1
        for k in per_token:
            out_extra[k][b, width - row.numel():] = rows_extra[k][b]
    return BranchPrompt(out_ids, out_mask, per_token=out_extra, prefill=dict(prefill), text_only=False)


def _position_state(model: nn.Module) -> list[nn.Module]:
    """Modules that keep decoding position state between forwards (Qwen-VL's M-RoPE `rope_deltas`)."""
    return [m for m in model.modules() if hasattr(m, "rope_deltas")]


class SecondBranch:
    """Runs one `BranchPrompt` beside a generation: prefill on the first call, then the new tokens on its own cache.

    Args:
        model: the VLM being generated from (patched by `vlm_attn.apply` or not).
        prompt: the branch's variant prompt.
        main_prompt: the main prompt's `input_ids` (B, T): `logits` reads the generated tokens after it.
        adapter: the model's family adapter (looked up when not given).
    """

    def __init__(self, model: nn.Module, prompt: BranchPrompt, main_prompt: torch.Tensor,
                 adapter: FamilyAdapter | None = None):
        self.model = model
        self.adapter = adapter or get_adapter(model)
        self._ids = prompt.input_ids
        self._mask = prompt.attention_mask
        self._extra = dict(prompt.per_token)  # per-token extras (zeros for the new tokens)
        self._prefill = dict(prompt.prefill)
        self.text_only = prompt.text_only
        self.prompt = main_prompt
        self.prompt_len = main_prompt.shape[1]
        self._cache: Any = None
        self._fed = 0  # generated tokens already in the branch cache
        self._state_modules = [] if self.text_only else _position_state(model)
        self._state: list[Any] = [None] * len(self._state_modules)

    @contextlib.contextmanager
    def _unsteered(self) -> Iterator[None]:
        with unsteered(self.model), torch.no_grad():
            yield

    @contextlib.contextmanager
    def _own_position_state(self) -> Iterator[None]:
        """Swap the branch's position state in for its forward, and the main call's back afterwards."""
        saved = [m.rope_deltas for m in self._state_modules]
        for m, value in zip(self._state_modules, self._state):
            m.rope_deltas = value
        try:
            yield
        finally:
            self._state = [m.rope_deltas for m in self._state_modules]
            for m, value in zip(self._state_modules, saved):
                m.rope_deltas = value

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits of the branch prompt followed by the tokens generated so far."""
        batch, total = input_ids.shape
        if batch != self.prompt.shape[0]:
            raise ValueError(
                f"the second branch was built for a batch of {self.prompt.shape[0]} but generate runs {batch} "
                "sequences: beam search and num_return_sequences > 1 are not supported with a second branch"
            )
        generated = total - self.prompt_len
        if generated < self._fed or generated < 0:
            raise ValueError(
                "the second branch received a sequence shorter than its prompt or than the previous step: build one "
                "processor per generate call (handle.logits_processor(inputs))"
            )
        new = input_ids[:, self.prompt_len + self._fed :].to(self._ids.device)
        ones = torch.ones_like(new, dtype=self._mask.dtype)
        prefill: dict[str, Any] = {}
        if self._cache is None:  # first step: the branch prompt plus whatever was generated already
            feed = torch.cat([self._ids, new], dim=1)
            extra = {k: torch.cat([v, torch.zeros_like(new, dtype=v.dtype)], dim=1) for k, v in self._extra.items()}
            prefill = self._prefill
        else:
            feed = new
            extra = {k: torch.zeros_like(new, dtype=v.dtype) for k, v in self._extra.items()}
        if feed.shape[1] == 0:
            raise ValueError("the second branch was called twice for the same step")
        self._mask = torch.cat([self._mask, ones], dim=1)
        positions: dict[str, Any] = {}
        if not self._state_modules:  # explicit positions: no model-level position state is read or written
            positions["position_ids"] = self.adapter.text_position_ids(self._mask, feed.shape[1])
        elif self._cache is not None:  # M-RoPE decode: text positions shifted by the branch's own rope_deltas
            text = self.adapter.text_position_ids(self._mask, feed.shape[1])
            positions["position_ids"] = text + self._state[0].to(text.device)
        with self._unsteered(), self._own_position_state():
            out = self.model(
                input_ids=feed,
                attention_mask=self._mask,
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
                **positions,
                **extra,
                **prefill,
            )
        self._cache = out.cache
        self._fed = generated
        return out.logits[:, -1, :]


class ContrastProcessor(LogitsProcessor):
    """Logits processor of a contrastive decoder: ``combine(scores, branch_logits, step)`` at every step.

    `step` is the number of tokens generated before this one (0 for the first generated token). The branch runs
    before `combine`; sampling warpers (temperature, top-p) that `generate` adds run after this processor.
    """

    def __init__(self, model: nn.Module, branch: SecondBranch,
                 combine: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]):
        self.model = model
        self.branch = branch
        self.combine = combine

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        other = self.branch.logits(input_ids).to(scores.device)
        engine = engine_of(self.model)
        if engine is not None:
            engine.mark_guidance()
        step = input_ids.shape[1] - self.branch.prompt_len
        return self.combine(scores, other, step).to(scores.dtype)


def contrast_configs(configs: Sequence[Any]) -> list[Any]:
    """The configs that decode against a second branch (they declare a `branch` kind), active or not."""
    return [c for c in configs if isinstance(getattr(type(c), "branch", None), str)]


def _branch_prompt(model: nn.Module, adapter: FamilyAdapter, config: Any, inputs: Mapping[str, Any],
                   tokenizer: Any) -> BranchPrompt:
    kind = type(config).branch
    if kind == "no_image":
        return no_image_prompt(adapter, inputs)
    if kind == "noised_image":
        return noised_image_prompt(inputs, config.noise)
    if kind == "prompt_prefix":
        if tokenizer is None:
            raise UserError(f"{type(config).__name__} writes its instruction into the prompt and needs the "
                            "tokenizer: vlm_attn.apply(model, configs, processor=processor)")
        prefix = torch.tensor(tokenizer(config.prefix_text(), add_special_tokens=False)["input_ids"])
        return prefixed_prompt(inputs, prefix, getattr(tokenizer, "bos_token_id", None))
    raise ValueError(f"{type(config).__name__} declares an unknown branch kind {kind!r}")


def branch_processors(model: nn.Module, configs: Sequence[Any], inputs: Mapping[str, Any],
                      tokenizer: Any = None) -> list[ContrastProcessor]:
    """One `ContrastProcessor` per active contrastive config, each with its own `SecondBranch` on `inputs`."""
    out = []
    adapter = get_adapter(model)
    for config in contrast_configs(configs):
        if not config.active:
            continue  # strength 0: the scores pass through untouched (no branch forward at all)
        main, _, _ = prompt_tensors(inputs)
        branch = SecondBranch(model, _branch_prompt(model, adapter, config, inputs, tokenizer), main["input_ids"],
                              adapter)
        out.append(ContrastProcessor(model, branch, config.combine))
    return out


def check_contrast(configs: Sequence[Any], guided: bool, processor: Any = None) -> bool:
    """Refuse what cannot run, before any generation; True when a contrastive decoder will run.

    One logits-level decoder per call: two of them (or one beside PAI/PAINT guidance) would each rewrite the
    scores the other produced, which neither method defines. ICD needs a tokenizer (`processor`).
    """
    active = [c for c in contrast_configs(configs) if c.active]
    names = [type(c).__name__ for c in active] + (["PAI/PAINT guidance"] if guided else [])
    if len(names) > 1:
        raise UserError(f"one logits-level decoder runs per call, got {', '.join(names)}: keep one (set "
                        "guidance=False on PAI/PAINT to combine their attention edit with VCD, ICD or M3ID)")
    for config in active:
        if type(config).branch == "prompt_prefix" and processor is None:
            raise UserError(f"{type(config).__name__} writes its instruction into the contrast prompt and needs the "
                            "tokenizer: vlm_attn.apply(model, configs, processor=processor)")
    return bool(active)
