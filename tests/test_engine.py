"""Engine equivalences on tiny models of the four core families (SPEC §1, issue 2)."""

import logging

import pytest
import torch

import vlm_attn
from vlm_attn.engine.method import AttentionMethod, last_row
from vlm_attn.methods.registry import register_method
from vlm_attn.prompting import build_inputs

from .conftest import CORE_FAMILIES, make_image

PROMPT = "describe the image in detail"
# Random weights have no massive activations: explicit dims and a low tau make text and visual sinks exist.
VAR = dict(sink_dims=tuple(range(8)), tau=2.0)


def inputs(processor, n=1, prompts=None, seeds=None):
    prompts = prompts or [PROMPT] * n
    seeds = seeds or list(range(len(prompts)))
    return build_inputs(processor, [make_image(s) for s in seeds], prompts)


def greedy(model, batch, n=8, **kw):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=n, do_sample=False, **kw)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_var_changes_only_rows_after_the_image(load, family):
    model, proc = load(family)
    batch = inputs(proc)
    ref = logits(model, batch)
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)) as handle:
        out = logits(model, batch)
        report = handle.report()["var"]
    last_image = int(torch.nonzero(model_image_mask(model, batch)[0]).max())
    assert torch.equal(out[:, : last_image + 1], ref[:, : last_image + 1])
    assert (out[:, last_image + 1 :] - ref[:, last_image + 1 :]).abs().max() > 1e-3
    assert report["total_heads_redistributed"] > 0
    assert sum(report["visual_sinks"].values()) > 0


def model_image_mask(model, batch):
    from vlm_attn.patches import get_adapter

    return get_adapter(model).image_mask(batch["input_ids"], dict(batch))


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_var_changes_generation(load, family):
    model, proc = load(family)
    changed = False
    for seed in range(3):
        batch = inputs(proc, seeds=[seed])
        ref = greedy(model, batch, n=12)
        with vlm_attn.apply(model, vlm_attn.VARConfig(p=1.0, rho=0.0, **VAR)):
            out = greedy(model, batch, n=12)
        changed |= not torch.equal(out, ref)
    assert changed


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_cache_equals_no_cache(load, family):
    model, proc = load(family)
    batch = inputs(proc)
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)):
        cached = greedy(model, batch, n=6)
        full = dict(batch)
        full["input_ids"] = cached
        full["attention_mask"] = torch.ones_like(cached)
        if "mm_token_type_ids" in batch:  # Qwen-VL: generated tokens are text (SPEC §1)
            pad = cached.shape[1] - batch["mm_token_type_ids"].shape[1]
            full["mm_token_type_ids"] = torch.nn.functional.pad(batch["mm_token_type_ids"], (0, pad))
        no_cache = logits(model, full)
    prompt_len = batch["input_ids"].shape[1]
    predicted = no_cache[0, prompt_len - 1 : -1].argmax(-1)
    assert torch.equal(predicted, cached[0, prompt_len:])


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_left_padded_batch_equals_single(load, family):
    model, proc = load(family)
    prompts = ["describe the image in detail", "is there a cat ?"]
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)):
        both = greedy(model, inputs(proc, prompts=prompts, seeds=[0, 1]), n=6)
        for i, prompt in enumerate(prompts):
            alone = greedy(model, inputs(proc, prompts=[prompt], seeds=[i]), n=6)
            assert torch.equal(both[i, -6:], alone[0, -6:])


def test_two_models_do_not_interfere(load):
    a, proc_a = load("llava")
    b, proc_b = load("qwen2_vl")
    batch_a, batch_b = inputs(proc_a), inputs(proc_b)
    with vlm_attn.apply(a, vlm_attn.VARConfig(**VAR)):
        solo_a = logits(a, batch_a)
    with vlm_attn.apply(b, vlm_attn.VARConfig(p=0.3, **VAR)):
        solo_b = logits(b, batch_b)
    ha = vlm_attn.apply(a, vlm_attn.VARConfig(**VAR))
    hb = vlm_attn.apply(b, vlm_attn.VARConfig(p=0.3, **VAR))
    assert torch.equal(logits(b, batch_b), solo_b)
    assert torch.equal(logits(a, batch_a), solo_a)
    assert ha.report()["var"] != hb.report()["var"]
    ha.remove()
    hb.remove()


def test_no_state_leaks_between_samples(load):
    model, proc = load("llava")
    first, second = inputs(proc, seeds=[5]), inputs(proc, prompts=["is there a cat ?"], seeds=[6])
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)):
        alone = greedy(model, second)
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)) as handle:
        greedy(model, first)
        sinks_first = handle.report()["var"]["visual_sinks"]
        after = greedy(model, second)
        sinks_second = handle.report()["var"]["visual_sinks"]
    assert torch.equal(after, alone)
    assert sinks_first != sinks_second


def _engine_run(model, batch, configs):
    """Install an Engine with one method per config (as `apply` does, without its checks), run a forward."""
    from vlm_attn.engine.engine import Engine
    from vlm_attn.methods.registry import build_method
    from vlm_attn.patches import get_adapter

    engine = Engine(model, get_adapter(model), [build_method(c) for c in configs])
    engine.install()
    try:
        logits(model, batch)
        call = engine.call
        sinks = [m.sink_positions(call, 2) for m in engine.methods]
        return engine.report(), sinks, [call.store[m] for m in engine.methods]
    finally:
        engine.remove()


def test_two_instances_of_one_method_keep_separate_state(load):
    """Two VAR configs in one engine: each instance finds its own sinks and reports its own counts.

    Both steer layer 2 only, whose input no edit has touched, so each instance must see exactly what it sees alone.
    """
    model, proc = load("llava")
    batch = inputs(proc)
    low = vlm_attn.VARConfig(layers=(2,), **VAR)
    high = vlm_attn.VARConfig(p=0.3, rho=0.0, layers=(2,), sink_dims=VAR["sink_dims"], tau=2.5)
    report, sinks, stores = _engine_run(model, batch, [low, high])
    alone_low, sinks_low, _ = _engine_run(model, batch, [low])
    alone_high, sinks_high, _ = _engine_run(model, batch, [high])
    assert stores[0] is not stores[1]
    assert not torch.equal(sinks_low[0], sinks_high[0])  # the two thresholds find different sinks
    assert torch.equal(sinks[0], sinks_low[0]) and torch.equal(sinks[1], sinks_high[0])
    for key in ("text_sinks", "visual_sinks", "rows"):
        assert report["var"][key] == alone_low["var"][key]
        assert report["var#2"][key] == alone_high["var"][key]
    assert report["var"]["total_heads_redistributed"] > 0 and report["var#2"]["total_heads_redistributed"] > 0


class _Uniform:
    """Test-only config: replace the last row of layer 1 by uniform attention over image keys."""

    name = "uniform_test"


@register_method(_Uniform)
class _UniformMethod(AttentionMethod):
    def __init__(self, config):
        self.name = config.name

    def rows(self, view):
        return last_row(view) if view.layer_idx == 1 else None

    def edit_probs(self, view, rows, probs):
        img = view.image_keys[:, None, None, :].float()
        probs = img.expand_as(probs) / img.sum(-1, keepdim=True)
        return probs, torch.ones(probs.shape[:3], dtype=torch.bool)


class _Identity:
    """Test-only config: recompute every text row explicitly without changing it."""

    name = "identity_test"


@register_method(_Identity)
class _IdentityMethod(AttentionMethod):
    def __init__(self, config):
        self.name = config.name

    def rows(self, view):
        return ~view.query_image

    def edit_probs(self, view, rows, probs):
        return probs, torch.ones(probs.shape[:3], dtype=torch.bool)


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_explicit_path_matches_sdpa(load, family):
    """Masking, GQA, scaling and causality of the recomputed rows agree with SDPA (padded batch included)."""
    model, proc = load(family)
    batch = inputs(proc, prompts=["describe the image in detail", "is there a cat ?"], seeds=[0, 1])
    ref = logits(model, batch)
    with vlm_attn.apply(model, _Identity()):
        out = logits(model, batch)
    valid = batch["attention_mask"].bool()
    assert torch.allclose(out[valid], ref[valid], atol=1e-4)


def test_written_rows_are_the_edited_attention(load):
    model, proc = load("llava")
    batch = inputs(proc)
    layer = model.model.language_model.layers[1].self_attn
    seen = {}
    layer.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out))
    layer.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("o", a[0]))
    with vlm_attn.apply(model, _Uniform()):
        logits(model, batch)
    heads, kv_heads, dim = 4, 2, 16
    v = seen["v"].view(1, -1, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=2)
    img = model_image_mask(model, batch)[0]
    expected = v[0, img].mean(0)  # (H, D)
    got = seen["o"][0, -1].view(heads, dim)
    assert torch.allclose(got, expected, atol=1e-5)


def test_prompt_without_image_is_unchanged_with_one_warning(load, caplog):
    model, proc = load("llava")
    text = proc.tokenizer(["USER: hello there ASSISTANT:"], return_tensors="pt")
    ref = greedy(model, dict(text))
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)):
        with caplog.at_level(logging.WARNING, logger="vlm_attn"):
            out = greedy(model, dict(text))
    assert torch.equal(out, ref)
    warnings = [r for r in caplog.records if "no image token" in r.getMessage()]
    assert len(warnings) == 1


def test_double_apply_is_refused(load):
    model, _ = load("llava")
    with vlm_attn.apply(model, vlm_attn.VARConfig(**VAR)):
        with pytest.raises(RuntimeError, match="already applied"):
            vlm_attn.apply(model, vlm_attn.VARConfig(**VAR))
