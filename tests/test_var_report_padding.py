"""VAR's sink counts cover real tokens only: a left-padded batch reports the sum of its samples (issue 11)."""

from __future__ import annotations

import torch

import vlm_attn
from vlm_attn.prompting import build_inputs

from .conftest import make_image


def var_counts(model, batch) -> dict:
    with vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0)) as handle:
        model.generate(**batch, max_new_tokens=2, do_sample=False)
        report = handle.report()["var"]
    return {key: report[key] for key in ("text_sinks", "visual_sinks")}


def test_padded_batch_counts_equal_the_sum_of_single_samples(load):
    model, proc = load("llava")
    with torch.no_grad():  # a pad embedding with a massive activation: every padding position is a sink
        model.get_input_embeddings().weight[proc.tokenizer.pad_token_id, 0] = 1000.0
    images = [make_image(0), make_image(1)]
    prompts = ["Describe this image in detail, please, with every object you can see in it.", "Hi"]
    batch = build_inputs(proc, images, prompts)
    assert int((batch["attention_mask"] == 0).sum()) >= 10  # the short prompt is left-padded
    singles = [var_counts(model, build_inputs(proc, [im], [p])) for im, p in zip(images, prompts)]
    together = var_counts(model, batch)
    expected = {key: {l: singles[0][key][l] + singles[1][key][l] for l in singles[0][key]} for key in together}
    assert together == expected
    assert sum(together["text_sinks"].values()) > 0  # the comparison is not between zeros
    # the padding positions themselves are sinks at this tau: counting them would have broken the sum
    with vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0)) as handle:
        model(**batch)
        method, call = handle.engine.methods[0], handle.engine.call
        padded = batch["attention_mask"] == 0
        assert any(bool((method.sink_positions(call, l) & padded).any()) for l in sorted(method.layers))
