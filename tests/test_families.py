"""Every supported family, on its tiny random model: loading, pass-through, where VAR acts, generation, padding.

Image layouts differ per family (SPEC §1, "Families and their quirks"), and so does what VAR may change:
- Most families put each image's tokens in one contiguous run: VAR edits only text rows after the first image
  token, so every row up to the last image token is bitwise that of the vanilla model.
- Idefics3 / SmolVLM wrap tiles in `<fake_token_around_image>` / `<row_i_col_j>` text tokens *between* image runs:
  those wrappers are VAR rows, so the exact guarantee stops at the first text row after the first image token.
- Gemma 3's bidirectional block spans only the image's own soft tokens: no image row sees text after the image, so
  the causal guarantee holds unchanged.
- PaliGemma's bidirectional prefix lets image rows see the prompt text after them, so edits of those text rows in
  one layer reach the image rows in the next. Exact: with VAR on the last layer only, image rows are untouched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vlm_attn
from vlm_attn.patches import UnsupportedModelError, get_adapter
from vlm_attn.testing.tiny import tiny_families

from .conftest import CORE_FAMILIES
from .test_engine import VAR, greedy, inputs, logits

NEW_FAMILIES = ["llava_onevision", "qwen3_vl", "idefics3", "smolvlm", "gemma3", "paligemma", "internvl"]
ALL_FAMILIES = CORE_FAMILIES + NEW_FAMILIES
WRAPPED_TILES = {"idefics3", "smolvlm"}  # text tokens sit between image runs
BIDIRECTIONAL_PREFIX = {"paligemma"}  # image rows attend to the prompt text after them


def image_mask(model, batch) -> torch.Tensor:
    return get_adapter(model).image_mask(batch["input_ids"], dict(batch))


def first_var_row(mask: torch.Tensor) -> int:
    """First row VAR may edit in a one-sample prompt: the first text row after the first image token."""
    pos = torch.arange(mask.numel())
    first_image = int(pos[mask].min())
    return int(pos[(~mask) & (pos > first_image)].min())


def test_supported_families_lists_every_family():
    assert set(vlm_attn.supported_families()) == set(ALL_FAMILIES)
    assert set(tiny_families()) == set(ALL_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_tiny_model_loads_through_from_pretrained(load, tiny_cache, family):
    model, proc = load(family)
    assert model.config.model_type == family
    assert str(tiny_cache) in model.config._name_or_path  # loaded back from the saved folder
    batch = inputs(proc)
    mask = image_mask(model, batch)
    assert int(mask.sum()) > 0
    with torch.no_grad():
        out = model(**batch).logits
    assert torch.isfinite(out).all()
    if family == "gemma3":  # a fresh Gemma 3 config zero-initialises this projection (SPEC §1): redrawn here
        assert model.model.multi_modal_projector.mm_input_projection_weight.abs().sum() > 0


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_passthrough_and_remove_are_bitwise(load, family):
    model, proc = load(family)
    batch = inputs(proc)
    ref = logits(model, batch)
    with vlm_attn.apply(model, []):
        assert torch.equal(logits(model, batch), ref)
    with vlm_attn.apply(model, vlm_attn.VARConfig(p=0.0, **VAR)):
        assert torch.equal(logits(model, batch), ref)
    handle = vlm_attn.apply(model, vlm_attn.VARConfig(**VAR))
    assert not torch.equal(logits(model, batch), ref)
    handle.remove()
    assert torch.equal(logits(model, batch), ref)
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    assert not model._forward_pre_hooks


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_var_changes_only_rows_after_the_image(load, family):
    model, proc = load(family)
    batch = inputs(proc)
    ref = logits(model, batch)
    mask = image_mask(model, batch)[0]
    last_image = int(mask.nonzero().max())
    num_layers = len(get_adapter(model).decoder_layers())
    if family in BIDIRECTIONAL_PREFIX:
        with vlm_attn.apply(model, vlm_attn.VARConfig(layers=(num_layers - 1,), **VAR)) as handle:
            out = logits(model, batch)
            report = handle.report()["var"]
        assert torch.equal(out[0, mask], ref[0, mask])
        assert (out[0, ~mask] - ref[0, ~mask]).abs().max() > 1e-3
    else:
        with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)) as handle:
            out = logits(model, batch)
            report = handle.report()["var"]
        exact = first_var_row(mask)
        if family not in WRAPPED_TILES:
            assert exact == last_image + 1
        assert torch.equal(out[:, :exact], ref[:, :exact])
        assert (out[:, last_image + 1 :] - ref[:, last_image + 1 :]).abs().max() > 1e-3
    assert report["total_heads_redistributed"] > 0
    assert sum(report["visual_sinks"].values()) > 0


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_var_changes_generation(load, family):
    model, proc = load(family)
    changed = False
    for seed in range(3):
        batch = inputs(proc, seeds=[seed])
        ref = greedy(model, batch, n=8)
        with vlm_attn.apply(model, vlm_attn.VARConfig(p=1.0, rho=0.0, **VAR)):
            out = greedy(model, batch, n=8)
        changed |= not torch.equal(out, ref)
        if changed:
            break
    assert changed


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_left_padded_batch_equals_single(load, family):
    model, proc = load(family)
    prompts = ["describe the image in detail", "is there a cat ?"]
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)):
        both = greedy(model, inputs(proc, prompts=prompts, seeds=[0, 1]), n=6)
        for i, prompt in enumerate(prompts):
            alone = greedy(model, inputs(proc, prompts=[prompt], seeds=[i]), n=6)
            assert torch.equal(both[i, -6:], alone[0, -6:])


def test_mllama_is_refused_with_the_reason():
    from transformers import MllamaConfig

    model = nn.Module()
    model.config = MllamaConfig()
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        get_adapter(model)
    with pytest.raises(UnsupportedModelError, match="mllama"):
        vlm_attn.apply(model, vlm_attn.VARConfig(**VAR))
