"""The engine's public verbs for passes: `engine_of`, `unsteered`, `capturing` (vlm_attn.engine)."""

from __future__ import annotations

import torch

import vlm_attn
from vlm_attn.engine import capturing, engine_of, unsteered
from vlm_attn.passes.anchor import AnchorCapture
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

PROMPT = "Describe the image."


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def test_engine_of_follows_apply_and_remove(load):
    model, _ = load("llava")
    assert engine_of(model) is None
    with vlm_attn.apply(model, vlm_attn.PAIConfig(guidance=False)) as handle:
        assert engine_of(model) is handle.engine
    assert engine_of(model) is None


def test_unsteered_is_bitwise_the_plain_model(load, image):
    model, proc = load("llava")
    inputs = build_inputs(proc, [image], [PROMPT])
    plain = _logits(model, inputs)
    with unsteered(model):  # nothing applied: a no-op
        assert torch.equal(_logits(model, inputs), plain)
    with vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=2.0, guidance=False)) as handle:
        steered = _logits(model, inputs)
        call = handle.engine.call
        with unsteered(model):
            assert torch.equal(_logits(model, inputs), plain)
        assert handle.engine.call is call  # the main call's state was not touched
    assert not torch.equal(steered, plain)


def test_capturing_alone_or_after_the_applied_methods(load, image):
    model, proc = load("llava")
    adapter = get_adapter(model)
    inputs = build_inputs(proc, [image], [PROMPT])
    last = len(adapter.decoder_layers()) - 1  # PAI steers the later layers: the last one is always among them
    capture = AnchorCapture(last)
    with capturing(model, capture, adapter) as engine:  # nothing applied: a temporary engine
        assert engine_of(model) is engine and engine.methods == [capture]
        _logits(model, inputs)
        plain_row = engine.call.store[capture.name]["rows"][0]
    assert engine_of(model) is None
    with vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=2.0, guidance=False)) as handle:
        applied = handle.engine.methods
        with capturing(model, AnchorCapture(last), adapter, steered=False) as engine:
            assert engine is handle.engine and len(engine.methods) == 1
            _logits(model, inputs)
            alone_row = engine.call.store["anchor_capture"]["rows"][0]
        with capturing(model, AnchorCapture(last), adapter) as engine:
            assert engine.methods[:-1] == applied
            _logits(model, inputs)
            after_row = engine.call.store["anchor_capture"]["rows"][0]
        assert handle.engine.methods is applied  # restored
    assert torch.equal(alone_row, plain_row)
    assert not torch.equal(after_row, plain_row)
