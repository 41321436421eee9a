"""Methods on bitsandbytes-quantised models (CPU: 8-bit, and 4-bit with the narrow modules skipped)."""

import pytest
import torch

import vlm_attn
from vlm_attn.prompting import build_inputs
from vlm_attn.tiny import tiny_path

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
