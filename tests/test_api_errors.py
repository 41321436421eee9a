"""Bad input gets a clear error or warning (issue 2)."""

import pytest
import torch

import vlm_attn
from vlm_attn.passes.sink_calibration import calibrate_sinks, extreme_dims
from vlm_attn.patches import UnsupportedModelError

from .conftest import make_image


def test_unsupported_model_names_supported_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="llava.*qwen2_vl"):
        vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=(1,)))


def test_unknown_sink_dims_say_how_to_get_them(load):
    model, _ = load("llava")
    with pytest.raises(ValueError, match="calibrate-sinks"):
        vlm_attn.apply(model, vlm_attn.VARConfig())
    assert model.config.text_config._attn_implementation == "sdpa"  # nothing half-applied
    with pytest.raises(ValueError, match="out of range"):
        vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=(999,)))


def test_known_table_lookup_ignores_the_name(load):
    model, _ = load("llava")
    from vlm_attn.patches import get_adapter

    adapter = get_adapter(model)
    assert adapter.lookup_sink_dims() is None
    model.config._name_or_path = "llava-hf/llava-1.5-7b-hf"
    model.config.text_config.hidden_size = 4096
    assert adapter.lookup_sink_dims() is None  # name and hidden size alone are not LLaMA-2-7B's architecture


def test_unreadable_image_is_a_clear_error(tmp_path, load):
    from vlm_attn.prompting import build_inputs

    _, proc = load("llava")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        build_inputs(proc, [bad], ["hi"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        build_inputs(proc, [tmp_path / "missing.png"], ["hi"])


def test_extreme_dims_by_hand():
    # 3 layers of 4 tokens x 8 dims; dim 5 is massive on token 0 from layer 2 on, dim 1 only in one layer of three
    base = torch.ones(1, 4, 8)
    layers = [base.clone() for _ in range(5)]
    for layer in layers[2:]:
        layer[0, 0, 5] = 40.0
    layers[4][0, 1, 1] = 40.0
    dims, fraction, peak = extreme_dims(layers, threshold=2.0, min_layer_fraction=0.5, max_token_fraction=0.25)
    assert dims == [5]
    assert fraction[5] == 1.0
    # token 0: x = 40 at dim 5, 1 elsewhere -> RMS = sqrt((1600 + 7) / 8)
    assert peak[5] == pytest.approx(40 / ((1607 / 8) ** 0.5), rel=1e-5)


def test_calibration_finds_a_planted_sink_dim(load, tmp_path):
    model, proc = load("llava")
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb[proc.tokenizer.bos_token_id, 7] = 60.0  # a massive activation on BOS, kept by the residual stream
    batch_images = [make_image(0)]
    bos_prompt = proc.tokenizer.bos_token + " describe the image"
    result = calibrate_sinks(model, proc, batch_images, prompt=bos_prompt, threshold=5.0, max_token_fraction=0.1)
    assert result.sink_dims == [7]
    path = result.save(tmp_path / "sinks.json")
    with vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=str(path), tau=5.0)) as handle:
        assert handle.engine.methods[0].sink_dims == (7,)
    with pytest.raises(ValueError, match="no hidden dimension"):
        calibrate_sinks(model, proc, batch_images, threshold=7.99)


def test_a_removed_handle_says_so(load, caplog):
    """`with handle:` on a removed handle refuses; report() after remove() is the last call's report, logged."""
    import logging

    import torch

    import vlm_attn
    from vlm_attn.prompting import build_inputs

    from .conftest import make_image

    model, processor = load("llava")
    batch = build_inputs(processor, [make_image(1)], ["Describe."])
    handle = vlm_attn.apply(model, vlm_attn.PAIConfig(guidance=False))
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=3, do_sample=False)
    live = handle.report()
    handle.remove()
    with caplog.at_level(logging.WARNING, logger="vlm_attn"):
        assert handle.report() == live
    assert any("removed" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="handle was removed"):
        with handle:
            pass
