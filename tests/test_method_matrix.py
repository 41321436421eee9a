"""Every attention method on every supported family, tested rather than assumed (issue 6).

For each family x {VAR, PAI, PAINT, PAINT with head modulation}, on the family's tiny random model:
- zero strength (VAR p=0; PAI / PAINT alpha = beta = 0, no guidance) gives bitwise the unpatched logits, and
  `remove()` restores them bitwise (the vision hooks PAINT installs are gone too);
- strong settings change the logits at the last prompt row and the method's report shows it acted.
One forward per check (no generate); one test per method checks that greedy generation changes on one family.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import vlm_attn
from vlm_attn.methods.heads import HeadSensitivity, config_hash
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .conftest import make_image
from .test_families import ALL_FAMILIES

PROMPT = "describe the image in detail"
SINKS = dict(sink_dims=tuple(range(8)), tau=2.0)
METHODS = ["var", "pai", "paint", "paint_heads", "dola", "vista", "only"]
SAME_FORWARD = {  # (zero strength: nothing installed, strong settings); issue 14
    "dola": (lambda: vlm_attn.DoLaConfig(alpha=0.0), lambda: vlm_attn.DoLaConfig()),
    "vista": (lambda: vlm_attn.VISTAConfig(strength=0.0, sla_mix=0.0), lambda: vlm_attn.VISTAConfig(strength=0.5)),
    "only": (lambda: vlm_attn.ONLYConfig(alpha_pos=0.0, alpha_neg=0.0), lambda: vlm_attn.ONLYConfig()),
}


def inputs(processor: Any, family: str, seed: int = 0) -> Any:
    # Qwen-VL: a larger picture gives 16 merged image tokens (4 at the default size), so PAINT's ratios select some
    size = (112, 112) if family.startswith("qwen") else (80, 60)
    return build_inputs(processor, [make_image(seed, size)], [PROMPT])


def logits(model: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def random_heads(model: Any, seed: int = 0) -> HeadSensitivity:
    """A head sensitivity of the right shape and config hash, from a random (L, H) matrix."""
    text = model.config.get_text_config()
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.rand(text.num_hidden_layers, text.num_attention_heads, generator=gen)
    return HeadSensitivity(model_name=model.config.model_type, config_hash=config_hash(model.config), matrix=matrix,
                           recipe={"source": "random, for tests"})


def config(method: str, model: Any, strong: bool) -> Any:
    """The method's config: zero strength (a pure pass-through) or strong settings that move tiny-model logits."""
    if method in SAME_FORWARD:
        return SAME_FORWARD[method][strong]()
    if method == "var":
        return vlm_attn.VARConfig(p=1.0, rho=0.0, **SINKS) if strong else vlm_attn.VARConfig(p=0.0, **SINKS)
    if method == "pai":
        return vlm_attn.PAIConfig(alpha=5.0 if strong else 0.0, guidance=False)
    heads = random_heads(model) if method == "paint_heads" else None
    value = 5.0 if strong else 0.0
    return vlm_attn.PAINTConfig(alpha=value, beta=value, guidance=False, head_sensitivity=heads)


def acted(method: str, report: dict[str, Any]) -> bool:
    """Whether the method's report shows that it edited attention (or, for the same-forward ones, the logits)."""
    if method == "dola":
        return report["dola"]["active"] and sum(report["dola"]["chosen_layer_counts"].values()) == 1
    if method == "vista":
        return report["vista"]["active"] and min(min(row) for row in report["vista"]["vector_norms"]) > 0
    if method == "only":
        return report["only"]["active"] and report["only"]["steps"] == 1
    if method == "var":
        data = report["var"]
        return data["total_heads_redistributed"] > 0
    data = report["pai" if method == "pai" else "paint"]
    if not data["active"] or sum(data["rows_amplified"].values()) == 0:
        return False
    if method == "pai":
        return True
    return data["local_tokens"] + data["summary_tokens"] > 0 and data["head_modulation"] == (method == "paint_heads")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_method_on_family(load, family, method):
    model, proc = load(family)
    batch = inputs(proc, family)
    ref = logits(model, batch)
    # (a) zero strength: bitwise pass-through, and remove() restores bitwise
    handle = vlm_attn.apply(model, config(method, model, strong=False))
    assert torch.equal(logits(model, batch), ref)
    handle.remove()
    assert torch.equal(logits(model, batch), ref)
    # (b) strong settings: the logits after the image move, and the report says the method acted
    with vlm_attn.apply(model, config(method, model, strong=True)) as handle:
        out = logits(model, batch)
        report = handle.report()
    assert (out[:, -1] - ref[:, -1]).abs().max() > 1e-3
    assert acted(method, report), report
    assert torch.equal(logits(model, batch), ref)
    assert not model._forward_pre_hooks


GENERATION: dict[str, Callable[[Any], Any]] = {
    "var": lambda m: config("var", m, strong=True),
    "pai": lambda m: vlm_attn.PAIConfig(alpha=3.0, guidance=False),
    "paint": lambda m: vlm_attn.PAINTConfig(alpha=3.0, beta=2.0, guidance=False),
    "paint_heads": lambda m: vlm_attn.PAINTConfig(alpha=3.0, beta=2.0, guidance=False, head_sensitivity=random_heads(m)),
    **{name: (lambda m, make=strong: make()) for name, (_, strong) in SAME_FORWARD.items()},
}


@pytest.mark.parametrize("method", METHODS)
def test_method_changes_greedy_generation(load, method):
    family = {"var": "gemma3", "pai": "internvl", "paint": "idefics3", "paint_heads": "llava_onevision",
              "dola": "qwen2_5_vl", "vista": "llava_next", "only": "smolvlm"}[method]
    model, proc = load(family)
    for seed in range(4):
        batch = inputs(proc, family, seed=seed)
        with torch.no_grad():
            ref = model.generate(**batch, max_new_tokens=8, do_sample=False)
            with vlm_attn.apply(model, GENERATION[method](model)):
                out = model.generate(**batch, max_new_tokens=8, do_sample=False)
        if not torch.equal(out, ref):
            return
    pytest.fail(f"{method} never changed greedy generation on {family}")


@pytest.mark.parametrize("family", ["llava_onevision", "qwen3_vl", "idefics3", "smolvlm", "gemma3", "paligemma",
                                    "internvl"])
def test_drop_image_removes_the_image_block(load, family):
    """PAI's image-free prompt drops the image and its wrapper tokens, keeps the text in order and the last token."""
    model, proc = load(family)
    adapter = get_adapter(model)
    batch = build_inputs(proc, [make_image(0), make_image(1, (50, 90))], [PROMPT, "is there a cat ?"])
    free = adapter.drop_image(batch["input_ids"], batch["attention_mask"])
    ids, mask = free["input_ids"], free["attention_mask"]
    tok = proc.tokenizer
    wrappers = {"<fake_token_around_image>", "<global-img>", "<img>", "</img>", "<start_of_image>",
                "<end_of_image>", "<|vision_start|>", "<|vision_end|>"}
    for b in range(2):
        text = tok.convert_ids_to_tokens(ids[b][mask[b].bool()].tolist())
        assert not adapter.image_mask(ids[b : b + 1], {}).any()
        assert not wrappers & set(text), text
        assert not any(t.startswith("<row_") for t in text), text
        prompt = tok.convert_ids_to_tokens(batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist())
        kept = [t for t in prompt if t not in wrappers and not t.startswith("<row_")
                and t not in tok.convert_ids_to_tokens(adapter.image_token_ids())]
        assert text == kept  # exactly the image block went; the text keeps its order
    assert torch.equal(ids[:, -1], batch["input_ids"][:, -1])
    if family == "paligemma":  # the text-only prompt stays PaliGemma's bidirectional prefix
        assert free["token_type_ids"].sum() == 0


def test_score_groups_match_the_connectors():
    """PAINT's per-token sums equal the families' own pooling / pixel shuffle applied to the patch scores."""
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector
    from transformers.models.internvl.modeling_internvl import InternVLModel

    from vlm_attn.methods.paint.selection import merge_scores
    from vlm_attn.patches._vision_capture import group_sum, shuffle_groups

    scores = torch.rand(64, dtype=torch.float64)
    pooled = torch.nn.AvgPool2d(2, 2)(scores.view(1, 1, 8, 8)).flatten() * 4  # Gemma 3: mean of 2x2 cells
    torch.testing.assert_close(merge_scores(scores, 2, (8, 8)), pooled)
    idefics = shuffle_groups(lambda x: Idefics3Connector.pixel_shuffle(None, x, 2), 64)
    expected = Idefics3Connector.pixel_shuffle(None, scores.view(1, 64, 1), 2).sum(-1).flatten()
    torch.testing.assert_close(group_sum(idefics)(scores), expected)
    internvl = shuffle_groups(lambda x: InternVLModel.pixel_shuffle(None, x.reshape(1, 8, 8, 1), 0.5), 64)
    expected = InternVLModel.pixel_shuffle(None, scores.view(1, 8, 8, 1), 0.5).reshape(-1, 4).sum(-1)
    torch.testing.assert_close(group_sum(internvl)(scores), expected)
    # both shuffles stack 2x2 spatial neighbourhoods, tokens in row-major order (as the image grids assume)
    cells = torch.arange(64).view(4, 2, 4, 2).permute(0, 2, 1, 3).reshape(16, 4)  # 2x2 cells, row-major
    assert torch.equal(idefics.sort(-1).values, cells)
    assert torch.equal(internvl.sort(-1).values, cells)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_guidance_runs_on_every_family(load, family):
    """PAI's image-free guidance pass works on each family's text-only prompt and leaves the call state alone."""
    from vlm_attn.passes.guidance import ImageFreeGuidance

    model, proc = load(family)
    batch = inputs(proc, family)
    free = ImageFreeGuidance(model, batch).image_free_logits(batch["input_ids"])
    assert free.shape == (1, model.config.get_text_config().vocab_size) and torch.isfinite(free).all()
    # its explicit positions (PaliGemma: 1-indexed; Qwen-VL: 1-D) are those the model gives the text-only prompt
    plain = logits(model, get_adapter(model).drop_image(batch["input_ids"], batch["attention_mask"]))[:, -1]
    torch.testing.assert_close(free, plain, atol=1e-5, rtol=0)
    with vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=0.5, gamma=3.0)) as handle, torch.no_grad():
        out = handle.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
