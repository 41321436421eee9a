"""The image-text-to-text pipeline runs the steered model and matches steered generate (issue 6)."""

import torch

import vlm_attn
from vlm_attn.pipelines import steered_pipeline
from vlm_attn.prompting import build_inputs

from .conftest import make_image

VAR = vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0)


def _generate(model, proc, image, prompt):
    batch = build_inputs(proc, [image], [prompt])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    return proc.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


def test_pipeline_equals_steered_generate(load):
    model, proc = load("llava")
    image, prompt = make_image(3), "describe the image in detail"
    vanilla = _generate(model, proc, image, prompt)
    pipe = steered_pipeline(model, VAR, processor=proc)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    out = pipe(text=messages, max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    steered = _generate(model, proc, image, prompt)
    assert out.strip() == steered
    assert pipe.vlm_attn_handle.report()["var"]["total_heads_redistributed"] > 0
    pipe.vlm_attn_handle.remove()
    assert _generate(model, proc, image, prompt) == vanilla
