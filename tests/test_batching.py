"""Left-padded batches of images of different sizes give each sample's own tokens (issue 6)."""

import pytest
import torch

import vlm_attn
from vlm_attn.prompting import build_inputs

from .conftest import make_image

METHODS = {
    "var": lambda: vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0),
    "pai": lambda: vlm_attn.PAIConfig(alpha=3.0, guidance=False),
    "paint": lambda: vlm_attn.PAINTConfig(alpha=3.0, beta=2.0, guidance=False),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "qwen2_5_vl", "llava_onevision", "idefics3"])
def test_mixed_image_sizes_batch_equals_single(load, family, method):
    model, proc = load(family)
    images = [make_image(0, size=(96, 40)), make_image(1, size=(50, 90))]
    prompts = ["describe the image in detail", "is there a cat ?"]
    batch = build_inputs(proc, images, prompts)
    counts = [int(n) for n in vlm_attn.patches.get_adapter(model).image_mask(batch["input_ids"], dict(batch)).sum(1)]
    assert counts[0] != counts[1]  # different image-token counts: the shorter prompt is left-padded
    with vlm_attn.apply(model, METHODS[method]()), torch.no_grad():
        both = model.generate(**batch, max_new_tokens=6, do_sample=False)
        for i in range(2):
            alone = model.generate(**build_inputs(proc, [images[i]], [prompts[i]]), max_new_tokens=6, do_sample=False)
            assert torch.equal(both[i, -6:], alone[0, -6:])


def test_pai_with_guidance_batch_equals_single_on_llava(load):
    """PAI with image-free guidance: the guidance pass drops each sample's image and re-pads the batch, so a
    left-padded batch (prompts of different lengths) gives each sample's own tokens."""
    model, proc = load("llava")
    images = [make_image(0, size=(96, 40)), make_image(1, size=(50, 90))]
    prompts = ["describe the image in detail", "cat"]
    batch = build_inputs(proc, images, prompts)
    assert int(batch["attention_mask"].sum(1).min()) < batch["attention_mask"].shape[1]  # padded
    with vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=3.0, gamma=3.0)) as handle, torch.no_grad():
        both = handle.generate(**batch, max_new_tokens=6, do_sample=False)
        for i in range(2):
            single = build_inputs(proc, [images[i]], [prompts[i]])
            alone = handle.generate(**single, max_new_tokens=6, do_sample=False)
            assert torch.equal(both[i, -6:], alone[0, -6:])
