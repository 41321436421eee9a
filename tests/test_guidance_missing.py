"""A generate call that leaves out the configured image-free guidance is reported and logged, never silent."""

from __future__ import annotations

import logging

import torch

import vlm_attn
from vlm_attn.prompting import build_inputs

from .conftest import make_image


def _batch(processor):
    return build_inputs(processor, [make_image(3)], ["Describe the image."])


def test_plain_generate_without_the_guidance_processor_is_reported(load, caplog):
    model, processor = load("llava")
    batch = _batch(processor)
    with vlm_attn.apply(model, vlm_attn.PAIConfig()) as handle:
        with caplog.at_level(logging.WARNING, logger="vlm_attn"), torch.no_grad():
            model.generate(**batch, max_new_tokens=4, do_sample=False)
        assert handle.report()["guidance"] == "missing"
        warned = [r for r in caplog.records if "NOT guided" in r.getMessage()]
        assert len(warned) == 1  # once per call, not once per step
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vlm_attn"), torch.no_grad():
            handle.generate(**batch, max_new_tokens=4, do_sample=False)
        assert handle.report()["guidance"] == "applied"
        assert not [r for r in caplog.records if "NOT guided" in r.getMessage()]
        with torch.no_grad():  # the unchanged generate with the handle's processor counts as guided too
            model.generate(**batch, max_new_tokens=4, do_sample=False, logits_processor=handle.logits_processor(batch))
        assert handle.report()["guidance"] == "applied"


def test_no_guidance_configured_means_no_guidance_entry(load, caplog):
    model, processor = load("llava")
    batch = _batch(processor)
    with vlm_attn.apply(model, [vlm_attn.PAIConfig(guidance=False)]) as handle:
        with caplog.at_level(logging.WARNING, logger="vlm_attn"), torch.no_grad():
            model.generate(**batch, max_new_tokens=4, do_sample=False)
        assert "guidance" not in handle.report()
        assert not [r for r in caplog.records if "NOT guided" in r.getMessage()]
