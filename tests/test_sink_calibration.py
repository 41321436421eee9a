"""calibrate_sinks scans the inputs of decoder layers 2 .. L-1 and never runs the LM head (issue 11)."""

from __future__ import annotations

import pytest
import torch

from vlm_attn.passes.sink_calibration import calibrate_sinks, layer_inputs
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .conftest import make_image


def plant(dim: int, value: float = 1000.0):
    """A forward hook that writes a massive activation at `dim` of token 0 into a module's output."""

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.clone()
        out[:, 0, dim] = value
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return hook


def plant_input(dim: int, value: float = 1000.0):
    """A forward pre-hook that writes a massive activation at `dim` of token 0 into a layer's input."""

    def hook(module, args, kwargs):
        if args:
            hidden = args[0].clone()
            hidden[:, 0, dim] = value
            return (hidden, *args[1:]), kwargs
        hidden = kwargs["hidden_states"].clone()
        hidden[:, 0, dim] = value
        return args, {**kwargs, "hidden_states": hidden}

    return hook


def count_calls(module, calls: list):
    return module.register_forward_hook(lambda *a: calls.append(1))


def test_final_norm_output_is_not_scanned_and_lm_head_never_runs(load):
    model, proc = load("llava")
    lm = get_adapter(model).language_model()
    calls: dict[str, list] = {"lm_head": [], "norm": []}
    handles = [lm.norm.register_forward_hook(plant(7)), count_calls(model.lm_head, calls["lm_head"]),
               count_calls(lm.norm, calls["norm"])]
    try:
        # 4 layers: inputs of layers 2 and 3 are scanned. The final norm's output (hidden_states[4]) would have made
        # dim 7 extreme in 1 of 3 scanned states, above the 0.3 fraction asked for here.
        with pytest.raises(ValueError, match="no hidden dimension"):
            calibrate_sinks(model, proc, [make_image(0)], threshold=5.0, min_layer_fraction=0.3)
    finally:
        for h in handles:
            h.remove()
    assert calls == {"lm_head": [], "norm": []}


def test_a_massive_activation_in_a_layer_input_is_found(load):
    model, proc = load("llava")
    layers = get_adapter(model).decoder_layers()
    assert len(layers) == 4
    handle = layers[3].register_forward_pre_hook(plant_input(7), with_kwargs=True)  # the input of layer L-1 only
    try:
        result = calibrate_sinks(model, proc, [make_image(0)], threshold=5.0, min_layer_fraction=0.5)
    finally:
        handle.remove()
    assert result.sink_dims == [7]
    assert result.layer_fraction == {7: 0.5}  # extreme in 1 of the 2 scanned inputs (layers 2 and 3)


def test_layer_inputs_are_the_inputs_of_layers_2_to_last(load):
    model, proc = load("llava")
    batch = build_inputs(proc, [make_image(0)], ["describe"])
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states  # [embeddings, layer 0 out, ..., norm out]
    got = layer_inputs(model, batch)
    assert len(got) == 2
    for l, h in zip((2, 3), got):
        torch.testing.assert_close(h, full[l], rtol=0, atol=0)
