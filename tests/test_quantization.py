"""Methods on bitsandbytes-quantised models (CPU: 8-bit, and 4-bit with the narrow modules skipped)."""

import pytest
import torch

import vlm_attn
from vlm_attn.prompting import build_inputs
from vlm_attn.testing.tiny import tiny_path

from .conftest import make_image

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[bnb]')")

# The vision tower, projector and lm_head are narrower than bitsandbytes' 64-wide 4-bit block: keep them in full
# precision (full module names, SPEC §1).
SKIP = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


@pytest.mark.parametrize("bits", [8, 4])
def test_var_on_quantized_llava(tiny_cache, bits):
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

    path = tiny_path("llava", tiny_cache)
    flag = {"load_in_8bit": True} if bits == 8 else {"load_in_4bit": True}
    quant = BitsAndBytesConfig(**flag, llm_int8_skip_modules=SKIP)
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=quant, device_map="cpu")
    layer = model.model.language_model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear8bitLt" if bits == 8 else "Linear4bit")
    proc = AutoProcessor.from_pretrained(path)
    batch = build_inputs(proc, [make_image(0)], ["describe the image in detail"])
    with torch.no_grad():
        ref = model(**batch).logits
        with vlm_attn.apply(model, []):
            assert torch.equal(model(**batch).logits, ref)
        with vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0)) as h:
            steered = model(**batch).logits
            assert h.report()["var"]["total_heads_redistributed"] > 0
        assert not torch.equal(steered, ref)
        assert torch.equal(model(**batch).logits, ref)


STEERING = {
    "var": (lambda: vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0),
            lambda r: r["var"]["total_heads_redistributed"] > 0),
    "pai": (lambda: vlm_attn.PAIConfig(alpha=5.0, guidance=False),
            lambda r: sum(r["pai"]["rows_amplified"].values()) > 0),
    "paint": (lambda: vlm_attn.PAINTConfig(alpha=5.0, beta=5.0, guidance=False),
              lambda r: r["paint"]["active"] and r["paint"]["local_tokens"] > 0),
}


@pytest.mark.parametrize("method", sorted(STEERING))
def test_every_attention_method_steers_the_8bit_model(tiny_cache, method):
    """The 8-bit language model (vision tower in full precision, so PAINT's hooks read it as usual) is steered by
    each attention method, and removing the method restores its logits bitwise."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

    path = tiny_path("llava", tiny_cache)
    quant = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP)
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=quant, device_map="cpu")
    assert type(model.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    batch = build_inputs(AutoProcessor.from_pretrained(path), [make_image(0)], ["describe the image in detail"])
    make, acted = STEERING[method]
    with torch.no_grad():
        ref = model(**batch).logits
        with vlm_attn.apply(model, make()) as handle:
            steered = model(**batch).logits
            assert acted(handle.report())
        assert (steered[:, -1] - ref[:, -1]).abs().max() > 1e-3
        assert torch.equal(model(**batch).logits, ref)
