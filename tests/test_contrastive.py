"""VCD, ICD and M3ID on real (tiny) models: the decoding equals a direct recomputation from independent forwards.

For every family: each method's processed scores at the first two steps equal its pure rule applied to the main
branch's raw logits and to the contrast logits of an independent, unpatched, cache-free forward on the variant
prompt (noised pixels from the same seed; the disturbance tokens inserted by hand; the prompt without its image)
plus the generated token, so the second branch's KV cache equals no-cache recomputation; and the main branch's raw
logits equal an unpatched forward too (the branch never disturbs the main call, Qwen-VL's position state included).
Then: strength 0 is bitwise the unpatched model, remove() restores it bitwise, a left-padded batch gives each
sample's tokens alone, VCD composes with VAR (main steered, branch not) and bad settings fail before generating.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlm_attn
from vlm_attn.errors import UserError
from vlm_attn.methods.icd import ICDConfig
from vlm_attn.methods.m3id import M3IDConfig
from vlm_attn.methods.vcd import VCDConfig, add_diffusion_noise, vcd_logits
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .conftest import make_image
from .test_families import ALL_FAMILIES

PROMPT = "describe the image in detail"
METHODS = ("vcd", "icd", "m3id")
STRONG = {"vcd": VCDConfig(alpha=1.0, beta=0.1), "icd": ICDConfig(alpha=1.0, beta=0.1),
          "m3id": M3IDConfig(lam=0.7, alpha=1.0)}  # alpha 1: the M3ID gate always open, a boost from step 0
OFF = {"vcd": VCDConfig(alpha=0.0), "icd": ICDConfig(alpha=0.0), "m3id": M3IDConfig(lam=0.0)}


def inputs(processor: Any, family: str, prompts=(PROMPT,), seeds=(0,)) -> Any:
    size = (112, 112) if family.startswith("qwen") else (80, 60)
    return build_inputs(processor, [make_image(s, size) for s in seeds], list(prompts))


def tensors(batch: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in dict(batch).items() if isinstance(v, torch.Tensor)}


def with_tokens(batch: dict[str, torch.Tensor], tokens: torch.Tensor, family: str = "") -> dict[str, torch.Tensor]:
    """The prompt followed by `tokens` (B, n): ids, mask and per-token extras (zeros: text) extended.

    PaliGemma marks the answer ("suffix") tokens with token type 1 (causal), the prompt with 0 (bidirectional)."""
    ids = batch["input_ids"]
    out = dict(batch)
    for key, value in batch.items():
        if key == "input_ids":
            out[key] = torch.cat([value, tokens.to(value.dtype)], dim=1)
        elif value.shape == ids.shape:
            ones = key == "attention_mask" or (family == "paligemma" and key == "token_type_ids")
            fill = torch.ones_like(tokens) if ones else torch.zeros_like(tokens)
            out[key] = torch.cat([value, fill.to(value.dtype)], dim=1)
    return out


def last_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits[:, -1].float()


def disturbed(batch: dict[str, torch.Tensor], processor: Any, config: ICDConfig) -> dict[str, torch.Tensor]:
    """ICD's prompt for one unpadded sample, written here by hand: the disturbance tokens after BOS."""
    assert batch["input_ids"].shape[0] == 1 and bool(batch["attention_mask"].all())
    tok = processor.tokenizer
    prefix = torch.tensor([tok(config.prefix_text(), add_special_tokens=False)["input_ids"]])
    ids = batch["input_ids"]
    at = 1 if tok.bos_token_id is not None and int(ids[0, 0]) == tok.bos_token_id else 0
    out = dict(batch)
    for key, value in batch.items():
        if value.shape == ids.shape:
            middle = prefix if key == "input_ids" else (torch.ones_like(prefix) if key == "attention_mask"
                                                        else torch.zeros_like(prefix))
            out[key] = torch.cat([value[:, :at], middle.to(value.dtype), value[:, at:]], dim=1)
    return out


def variant(method: str, model: Any, processor: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The contrast branch's prompt, built independently of vlm_attn.passes.branch."""
    if method == "vcd":
        cfg = STRONG["vcd"]
        return {**batch, "pixel_values": add_diffusion_noise(batch["pixel_values"], cfg.noise_step, cfg.seed, batch)}
    if method == "icd":
        return disturbed(batch, processor, STRONG["icd"])
    return get_adapter(model).drop_image(batch["input_ids"], batch["attention_mask"])


def generate(model: Any, batch: Any, steps: int, **kwargs: Any) -> Any:
    with torch.no_grad():
        return vlm_attn.steered_generate(model, **batch, max_new_tokens=steps, output_scores=True,
                                         output_logits=True, return_dict_in_generate=True,
                                         **{"do_sample": False, **kwargs})


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_each_method_equals_recomputation_from_independent_forwards(load, family):
    model, processor = load(family)
    batch = tensors(inputs(processor, family))
    for method in METHODS:
        config = STRONG[method]
        with vlm_attn.apply(model, config, processor=processor) as handle:
            out = generate(model, batch, 2)
            report = handle.report()
        assert report["guidance"] == "applied" and report[method]["active"]
        first = out.sequences[:, batch["input_ids"].shape[1]:][:, :1]
        branch = variant(method, model, processor, batch)
        for step, (main_in, other_in) in enumerate([(batch, branch), (with_tokens(batch, first, family),
                                                                       with_tokens(branch, first, family))]):
            main = out.logits[step].float()
            torch.testing.assert_close(main, last_logits(model, main_in), atol=1e-4, rtol=0,
                                       msg=f"{family}/{method}: main branch disturbed at step {step}")
            expected = config.combine(main, last_logits(model, other_in), step)
            torch.testing.assert_close(out.scores[step], expected, atol=1e-4, rtol=0,
                                       msg=f"{family}/{method}: step {step} differs from recomputation")
        assert not torch.equal(out.scores[0], out.logits[0])  # the method acted


@pytest.mark.parametrize("method", METHODS)
def test_strength_zero_is_bitwise_the_model_and_remove_restores(load, method):
    model, processor = load("llava")
    batch = inputs(processor, "llava")
    plain = generate(model, batch, 3)
    before = last_logits(model, tensors(batch))
    with vlm_attn.apply(model, OFF[method], processor=processor) as handle:
        assert len(handle.logits_processor(batch)) == 0  # no branch forward at all
        off = generate(model, batch, 3)
        assert handle.report()[method] == {"active": False, "reason": "strength 0 (scores pass through)"}
    assert torch.equal(off.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(off.scores, plain.scores))
    with vlm_attn.apply(model, STRONG[method], processor=processor):
        generate(model, batch, 3)
    assert torch.equal(last_logits(model, tensors(batch)), before)
    assert all(torch.equal(a, b) for a, b in zip(generate(model, batch, 3).scores, plain.scores))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_left_padded_batch_equals_each_sample_alone(load, family):
    model, processor = load(family)
    prompts, seeds = (PROMPT, "what is in this picture? answer in one long sentence"), (1, 2)
    batch = inputs(processor, family, prompts, seeds)
    assert not bool(batch["attention_mask"].all())  # the shorter prompt is left-padded
    for method in METHODS:
        with vlm_attn.apply(model, STRONG[method], processor=processor):
            together = generate(model, batch, 4)
            alone = [generate(model, inputs(processor, family, (p,), (s,)), 4) for p, s in zip(prompts, seeds)]
        width = batch["input_ids"].shape[1]
        for i, single in enumerate(alone):
            own = single.sequences.shape[1] - 4
            assert torch.equal(together.sequences[i, width:], single.sequences[0, own:]), f"{family}/{method}/{i}"
            for a, b in zip(together.scores, single.scores):
                finite = torch.isfinite(b[0])
                assert torch.equal(torch.isfinite(a[i]), finite)
                torch.testing.assert_close(a[i][finite], b[0][finite], atol=2e-4, rtol=0)


def test_vcd_composes_with_var_main_steered_branch_plain(load):
    model, processor = load("llava")
    batch = tensors(inputs(processor, "llava"))
    var = vlm_attn.VARConfig(p=1.0, rho=0.0, sink_dims=tuple(range(8)), tau=2.0)
    with vlm_attn.apply(model, [var, VCDConfig()], processor=processor) as handle:
        out = generate(model, batch, 1)
        assert handle.report()["var"]["active"]
    noised = last_logits(model, variant("vcd", model, processor, batch))  # unpatched: the branch is never steered
    assert not torch.allclose(out.logits[0], last_logits(model, batch), atol=1e-3)  # VAR steered the main branch
    torch.testing.assert_close(out.scores[0], vcd_logits(out.logits[0], noised, 1.0, 0.1), atol=1e-4, rtol=0)


def test_bad_settings_fail_before_generating(load):
    model, processor = load("llava")
    batch = inputs(processor, "llava")
    with vlm_attn.apply(model, VCDConfig()) as handle:
        for extra in ({"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}):
            with pytest.raises(ValueError, match="one sequence per prompt"):
                handle.generate(**batch, max_new_tokens=2, **extra)
    with pytest.raises(UserError, match="needs the tokenizer"):
        vlm_attn.apply(model, ICDConfig())
    with pytest.raises(UserError, match="one logits-level decoder"):
        vlm_attn.apply(model, [VCDConfig(), M3IDConfig()])
    with pytest.raises(UserError, match="guidance=False"):
        vlm_attn.apply(model, [vlm_attn.PAIConfig(), VCDConfig()])
    assert not hasattr(model, "_vlm_attn_handle")
    with vlm_attn.apply(model, [vlm_attn.PAIConfig(guidance=False), VCDConfig(), M3IDConfig(lam=0)]) as handle:
        assert len(handle.logits_processor(batch)) == 1  # VCD only: PAI's attention edit beside it, M3ID off
    with pytest.raises(UserError, match="no pixel_values"):
        with vlm_attn.apply(model, VCDConfig()) as handle:
            handle.logits_processor({"input_ids": batch["input_ids"]})


def test_sampling_runs_the_contrast_before_the_warpers(load):
    """With do_sample the processed scores are the contrast divided by the temperature (warpers run after it)."""
    model, processor = load("llava")
    batch = tensors(inputs(processor, "llava"))
    with vlm_attn.apply(model, VCDConfig(), processor=processor):
        torch.manual_seed(0)
        out = generate(model, batch, 1, do_sample=True, temperature=0.5, top_p=1.0, top_k=0)
    noised = last_logits(model, variant("vcd", model, processor, batch))
    torch.testing.assert_close(out.scores[0], vcd_logits(out.logits[0], noised, 1.0, 0.1) / 0.5, atol=1e-4, rtol=0)


def test_a_generate_without_the_branch_processor_is_reported(load):
    model, processor = load("llava")
    batch = inputs(processor, "llava")
    with vlm_attn.apply(model, M3IDConfig()) as handle, torch.no_grad():
        model.generate(**batch, max_new_tokens=3, do_sample=False)
        assert handle.report()["guidance"] == "missing"
        model.generate(**batch, max_new_tokens=3, do_sample=False, logits_processor=handle.logits_processor(batch))
        assert handle.report()["guidance"] == "applied"


def test_cli_report_names_the_branch_that_ran():
    """The CLI report says which second branch its processor ran for: a contrast branch is not PAI's guidance."""
    from vlm_attn.commands.common import format_report

    contrast = format_report({"image_tokens": [4], "guidance": "applied", "vcd": {"active": True}})
    guided = format_report({"image_tokens": [4], "guidance": "missing", "pai": {"active": True}})
    assert "vcd contrast branch: applied" in contrast and "image-free guidance" not in contrast
    assert "image-free guidance: missing" in guided
