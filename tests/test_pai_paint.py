"""PAI and PAINT in the engine on tiny models (issue 3): amplification, guidance, token selection, pass-through."""

import math

import pytest
import torch

import vlm_attn
from vlm_attn.passes.guidance import ImageFreeGuidance
from vlm_attn.methods.pai import amplify_logits, guided_logits
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .conftest import CORE_FAMILIES, make_image

PROMPT = "describe the image in detail"


def inputs(processor, family, seed=0, prompts=None):
    # Qwen-VL: a larger picture gives 16 merged image tokens (4 at the default size), so that PAINT's ratios select some
    size = (112, 112) if family.startswith("qwen") else (80, 60)
    prompts = prompts or [PROMPT]
    return build_inputs(processor, [make_image(seed + i, size) for i in range(len(prompts))], prompts)


def greedy(model, batch, n=8, **kw):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=n, do_sample=False, **kw)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# ---------------------------------------------------------------- formulas on hand numbers
def test_amplification_and_guidance_on_hand_numbers():
    z = torch.tensor([[[[-2.0, 1.0, 3.0]]]])
    out = amplify_logits(z, torch.tensor([[True, True, False]]), 0.5)
    assert out.flatten().tolist() == [-1.0, 1.5, 3.0]  # z + alpha * |z| on image keys only
    lp_img = torch.log(torch.tensor([[0.6, 0.35, 0.05]]))
    lp_free = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    out = guided_logits(lp_img, lp_free, gamma=1.1, cutoff=0.1)
    # 1.1 * log(0.6 / 0.2) + log(0.2); 1.1 * log(0.35 / 0.3) + log(0.3); 0.05 < 0.1 * 0.6 is cut off
    assert out[0, 0].item() == pytest.approx(1.1 * math.log(3.0) + math.log(0.2), abs=1e-5)
    assert out[0, 1].item() == pytest.approx(1.1 * math.log(0.35 / 0.3) + math.log(0.3), abs=1e-5)
    assert out[0, 2].item() == float("-inf")


def test_guidance_processor_applies_the_formula(load):
    model, proc = load("llava")
    batch = inputs(proc, "llava")
    guide = ImageFreeGuidance(model, batch, gamma=1.1, cutoff=0.1)
    scores = torch.randn(1, model.config.text_config.vocab_size)
    free = ImageFreeGuidance(model, batch).image_free_logits(batch["input_ids"])
    out = guide(batch["input_ids"], scores.clone())
    lp_img, lp_free = scores.log_softmax(-1), free.log_softmax(-1)
    expected = 1.1 * (lp_img - lp_free) + lp_free
    cut = lp_img < math.log(0.1) + lp_img.max()
    assert torch.equal(torch.isinf(out), cut)
    torch.testing.assert_close(out[~cut], expected[~cut])


# ---------------------------------------------------------------- image-free prompt
@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_drop_image_removes_the_image(load, family):
    model, proc = load(family)
    batch = inputs(proc, family, prompts=[PROMPT, "is there a cat ?"])
    adapter = get_adapter(model)
    extra = {k: batch[k] for k in ("mm_token_type_ids",) if k in batch}
    free = adapter.drop_image(batch["input_ids"], batch["attention_mask"], **extra)
    ids = free["input_ids"]
    assert not adapter.image_mask(ids, {}).any()
    if family.startswith("qwen"):
        assert not (ids == model.config.vision_start_token_id).any()
        assert not (ids == model.config.vision_end_token_id).any()
        assert free["mm_token_type_ids"].sum() == 0
    # last prompt token stays last; the text tokens keep their order
    assert torch.equal(ids[:, -1], batch["input_ids"][:, -1])
    for b in range(2):
        kept = batch["input_ids"][b][batch["attention_mask"][b].bool()]
        text = kept[~adapter.image_free_mask(kept[None], {})[0]]
        assert torch.equal(ids[b][free["attention_mask"][b].bool()], text)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_guidance_pass_is_never_steered_and_keeps_the_call_state(load, family):
    model, proc = load(family)
    batch = inputs(proc, family)
    ids = greedy(model, batch, n=3)
    plain = ImageFreeGuidance(model, batch)
    ref = [plain.image_free_logits(ids[:, : batch["input_ids"].shape[1] + k]) for k in range(3)]
    rope = getattr(model.model, "rope_deltas", None)
    with vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=5.0)) as handle:
        logits(model, batch)  # a steered forward: its per-call state must survive the guidance pass
        call = handle.engine.call
        seq_len = call.seq_len
        steered = ImageFreeGuidance(model, batch)
        out = [steered.image_free_logits(ids[:, : batch["input_ids"].shape[1] + k]) for k in range(3)]
        assert handle.engine.call is call and call.seq_len == seq_len
    for a, b in zip(ref, out):
        assert torch.equal(a, b)
    if rope is not None:  # Qwen-VL: the main call's M-RoPE deltas are left alone
        assert torch.equal(model.model.rope_deltas, rope)


def test_guidance_refuses_batch_expansion(load):
    model, proc = load("llava")
    batch = inputs(proc, "llava")
    guide = ImageFreeGuidance(model, batch)
    with pytest.raises(ValueError, match="beam search"):
        guide(batch["input_ids"].repeat(2, 1), torch.zeros(2, model.config.text_config.vocab_size))


# ---------------------------------------------------------------- amplification scope
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_amplification_acts_on_the_first_generated_token(load, family):
    model, proc = load(family)
    batch = inputs(proc, family)
    ref = logits(model, batch)
    with vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=3.0, guidance=False)) as handle:
        out = logits(model, batch)
        greedy(model, batch, n=1)
        report = handle.report()["pai"]
    # only the prefill's last row (which predicts generated token 1) is edited
    assert torch.equal(out[:, :-1], ref[:, :-1])
    assert (out[:, -1] - ref[:, -1]).abs().max() > 1e-3
    assert report["rows_amplified"] == {2: 1, 3: 1}


# ---------------------------------------------------------------- end to end, four families
def _changes(model, proc, family, configs, guided=False):
    for seed in range(4):
        batch = inputs(proc, family, seed=seed)
        ref = greedy(model, batch)
        with vlm_attn.apply(model, configs) as handle:
            with torch.no_grad():
                out = handle.generate(**batch, max_new_tokens=8, do_sample=False) if guided else greedy(model, batch)
        if not torch.equal(out, ref):
            return True
    return False


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_each_method_changes_generation(load, family):
    model, proc = load(family)
    assert _changes(model, proc, family, vlm_attn.PAIConfig(alpha=3.0, guidance=False))
    assert _changes(model, proc, family, vlm_attn.PAINTConfig(alpha=3.0, beta=2.0, guidance=False))
    assert _changes(model, proc, family, vlm_attn.PAIConfig(alpha=0.0, gamma=3.0), guided=True)
    with vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False)) as handle:
        logits(model, inputs(proc, family))
        report = handle.report()["paint"]
    assert report["active"] and report["images"] == 1 and report["local_tokens"] > 0


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_zero_strength_is_bitwise_passthrough(load, family):
    model, proc = load(family)
    batch = inputs(proc, family)
    ref_logits, ref_ids = logits(model, batch), greedy(model, batch)
    for cfg in (vlm_attn.PAIConfig(alpha=0.0, guidance=False), vlm_attn.PAINTConfig(alpha=0.0, beta=0.0, guidance=False)):
        with vlm_attn.apply(model, cfg) as handle:
            assert torch.equal(logits(model, batch), ref_logits)
            with torch.no_grad():
                assert torch.equal(handle.generate(**batch, max_new_tokens=8, do_sample=False), ref_ids)
            assert not handle.logits_processor(batch)
    assert torch.equal(logits(model, batch), ref_logits)  # remove restores (vision hooks gone too)


def test_paint_llava_next_amplifies_only_the_base_image_block(load):
    model, proc = load("llava_next")
    batch = inputs(proc, "llava_next")
    with vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, local_ratio=0.5)) as handle:
        logits(model, batch)
        local, summary = handle.engine.call.store[handle.engine.methods[0]]
    image = get_adapter(model).image_mask(batch["input_ids"], {})[0]
    positions = torch.nonzero(image).flatten()
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    base = positions[: grid * grid]
    chosen = torch.nonzero(local[0] | summary[0]).flatten()
    assert chosen.numel() > 0 and torch.isin(chosen, base).all()
    assert positions.numel() > base.numel()  # tiles and newlines exist and are left alone


def test_paint_composes_with_var_and_guidance(load):
    model, proc = load("llava")
    batch = inputs(proc, "llava")
    configs = [vlm_attn.PAINTConfig(alpha=0.7, beta=0.4), vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0)]
    with vlm_attn.apply(model, configs) as handle:
        assert len(handle.logits_processor(batch)) == 1
        with torch.no_grad():
            handle.generate(**batch, max_new_tokens=4, do_sample=False)
        report = handle.report()
    assert report["paint"]["active"] and report["var"]["active"]


def test_paint_sessions_do_not_leak(load):
    """Scores captured for one call are consumed by it; the next call captures its own image's."""
    model, proc = load("llava")
    with vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False)) as handle:
        cols = []
        for seed in (0, 5):
            logits(model, inputs(proc, "llava", seed=seed))
            cols.append(handle.engine.call.store[handle.engine.methods[0]][0].clone())
        assert not handle.engine.methods[0]._pending
    assert not torch.equal(cols[0], cols[1])
