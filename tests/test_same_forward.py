"""DoLa, VISTA and ONLY on tiny models: each equals a direct recomputation from unpatched forwards (issue 14).

The recomputations read `output_hidden_states` / `output_attentions` of plain forwards (no hook of ours) and apply
the methods' pure functions (checked against hand-computed numbers in tests/methods/). Also: left-padded batches
equal each sample alone, the KV cache equals recomputation without it, the methods compose with attention methods,
and bad settings fail before anything runs. Pass-through and remove() on every family: tests/test_method_matrix.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlm_attn
from vlm_attn.cli import main
from vlm_attn.methods.dola import DoLaConfig, dola_logits
from vlm_attn.methods.only import ONLYConfig, drop_outliers, only_fuse, text_visual_entropy_ratio
from vlm_attn.methods.vista import VISTAConfig, sla_logits, steer_mlp_output
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs

from .conftest import make_image

PROMPT = "describe the image in detail"
EXACT = dict(atol=1e-5, rtol=1e-5)


def one(proc: Any, family: str, seed: int = 0) -> Any:
    size = (112, 112) if family.startswith("qwen") else (80, 60)
    return build_inputs(proc, [make_image(seed, size)], [PROMPT])


def plain(model: Any, batch: Any, **kw: Any) -> Any:
    with torch.no_grad():
        return model(**batch, **kw)


def steered(model: Any, config: Any, batch: Any) -> tuple[torch.Tensor, dict[str, Any], Any]:
    """The logits, report and (for VISTA) the steering vectors of one forward with `config` applied."""
    with vlm_attn.apply(model, config) as handle, torch.no_grad():
        out = model(**batch).logits
        return out, handle.report(), getattr(handle.engine.methods[-1], "vectors", None)


# ------------------------------------------------------------------------------------------- DoLa
@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
@pytest.mark.parametrize("settings", [dict(layers=(0, 1, 2)),
                                      dict(layers=(0, 2), premature_norm=True, relative_top=0.0, alpha=0.5)])
def test_dola_equals_recomputation_from_hidden_states(load, family, settings):
    model, proc = load(family)
    batch = one(proc, family)
    config = DoLaConfig(**settings)
    ref = plain(model, batch, output_hidden_states=True)
    adapter = get_adapter(model)
    with torch.no_grad():
        early = torch.stack([model.get_output_embeddings()(
            adapter.final_norm()(ref.hidden_states[j][:, -1]) if config.premature_norm else ref.hidden_states[j][:, -1])
            for j in config.layers])
    expected, chosen = dola_logits(ref.logits[:, -1], early, config.alpha, config.relative_top)
    out, report, _ = steered(model, config, batch)
    torch.testing.assert_close(out[:, -1], expected, **EXACT)
    assert torch.equal(out[:, :-1], ref.logits[:, :-1])  # only the decoded position changes
    assert report["dola"]["chosen_layer_counts"] == {config.layers[int(chosen)]: 1}


def test_dola_default_layers_and_generation_change(load):
    model, proc = load("llava")
    batch = one(proc, "llava")
    with torch.no_grad():
        ref = model.generate(**batch, max_new_tokens=6, do_sample=False)
        with vlm_attn.apply(model, DoLaConfig(layers=(0, 2))) as handle:
            out = model.generate(**batch, max_new_tokens=6, do_sample=False)
            counts = handle.report()["dola"]["chosen_layer_counts"]
    assert not torch.equal(out, ref)
    assert sum(counts.values()) == 6  # one choice per generated token (prefill + 5 decode steps)


# ------------------------------------------------------------------------------------------- VISTA
def direct_vectors(model: Any, batch: Any) -> torch.Tensor:
    """(L, B, D) layer outputs at the last position, with the image minus without it, from plain forwards."""
    adapter = get_adapter(model)
    layers = adapter.decoder_layers()
    free = adapter.drop_image(batch["input_ids"], batch["attention_mask"],
                              **{k: batch[k] for k in ("mm_token_type_ids",) if k in batch})

    def outputs(inputs: Any) -> torch.Tensor:
        last: list[torch.Tensor] = []  # the last layer's output before the final norm is not in hidden_states
        hook = layers[-1].register_forward_hook(lambda m, a, o: last.append(o[:, -1]))
        try:
            hs = plain(model, inputs, output_hidden_states=True).hidden_states
        finally:
            hook.remove()
        return torch.stack([hs[i + 1][:, -1] for i in range(len(layers) - 1)] + last)

    return outputs(batch) - outputs(free)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma"])
def test_vista_vectors_and_steered_logits_equal_recomputation(load, family):
    model, proc = load(family)
    batch = one(proc, family)
    config = VISTAConfig(strength=0.5, sla_mix=0.3)
    vectors = direct_vectors(model, batch)
    # the steered forward, rebuilt with plain hooks from the directly computed vectors and the pure rotation
    mlps = [layer.mlp for layer in get_adapter(model).decoder_layers()]
    hooks = [mlp.register_forward_hook(lambda m, a, o, v=vectors[i]: steer_mlp_output(o, v[:, None], 0.5))
             for i, mlp in enumerate(mlps)]
    try:
        ref = plain(model, batch, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    head = model.get_output_embeddings()
    with torch.no_grad():  # default window for 4 layers: outputs of layers 0..2 = hidden_states[1..3]
        window = head(torch.stack([ref.hidden_states[i] for i in (1, 2, 3)]).mean(0))
    expected = sla_logits(ref.logits, window, 0.3)
    out, report, made = steered(model, config, batch)
    torch.testing.assert_close(made, vectors, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert report["vista"]["steered_layers"] == [0, 1, 2, 3] and report["vista"]["sla_layers"] == [0, 1, 2]


def test_vista_sla_alone_and_the_last_layer_window(load):
    """SLA without steering reads the plain hidden states; a window holding the last layer reads it before the norm."""
    model, proc = load("llava")
    batch = one(proc, "llava")
    last: list[torch.Tensor] = []
    layers = get_adapter(model).decoder_layers()
    hook = layers[-1].register_forward_hook(lambda m, a, o: last.append(o))
    try:
        ref = plain(model, batch, output_hidden_states=True)
    finally:
        hook.remove()
    head = model.get_output_embeddings()
    with torch.no_grad():
        window = head(torch.stack([ref.hidden_states[2], last[0]]).mean(0))
        normed = torch.stack([head(get_adapter(model).final_norm()(h)) for h in (ref.hidden_states[2], last[0])])
    out, _, _ = steered(model, VISTAConfig(strength=0.0, sla_mix=0.4, sla_layers=(1, 3)), batch)
    torch.testing.assert_close(out, sla_logits(ref.logits, window, 0.4), atol=1e-5, rtol=1e-5)
    out, _, _ = steered(model, VISTAConfig(strength=0.0, sla_mix=0.4, sla_layers=(1, 3), sla_norm=True), batch)
    torch.testing.assert_close(out, sla_logits(ref.logits, normed.mean(0), 0.4), atol=1e-5, rtol=1e-5)
    # a soft-capped head (Gemma 2) mixes logits after the forward instead of hidden states: here (Llama ignores the
    # cap) both ways must agree
    text = model.config.get_text_config()
    text.final_logit_softcapping = 30.0
    try:
        capped, _, _ = steered(model, VISTAConfig(strength=0.0, sla_mix=0.4, sla_layers=(1, 3)), batch)
    finally:
        text.final_logit_softcapping = None
    torch.testing.assert_close(capped, sla_logits(ref.logits, window, 0.4), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- ONLY
def only_recomputed(model: Any, batch: Any, config: ONLYConfig, branch_only: bool = False) -> torch.Tensor:
    """ONLY's fused last-position scores (or its branch logits l_cd) from one plain eager forward's attentions and
    hidden states."""
    adapter = get_adapter(model)
    adapter.set_text_attn_implementation("eager")
    try:
        ref = plain(model, batch, output_hidden_states=True, output_attentions=True)
    finally:
        adapter.set_text_attn_implementation("sdpa")
    layers = adapter.decoder_layers()
    k, n = config.layer, len(layers)
    attn = adapter.attention_module(layers[k])
    probs = ref.attentions[k][:, :, -1].float()  # (B, H, K): the last row
    image = adapter.image_mask(batch["input_ids"], dict(batch))
    text = ~image
    text[:, 0] = False  # the first token (BOS) is in neither group
    zeroed = drop_outliers(drop_outliers(probs, text), image)
    tver = text_visual_entropy_ratio(zeroed, text, image)
    zeroed = zeroed.masked_fill((tver < tver.mean(-1, keepdim=True))[:, :, None], 0.0)
    with torch.no_grad():
        b, t, _ = ref.hidden_states[k].shape
        value = attn.v_proj(layers[k].input_layernorm(ref.hidden_states[k])).view(b, t, -1, attn.head_dim)
        value = value.transpose(1, 2).repeat_interleave(probs.shape[1] // value.shape[2], dim=1)
        heads = zeroed[:, :, None, :] @ value  # (B, H, 1, D)
        branch = attn.o_proj(heads.transpose(1, 2).reshape(b, 1, -1))
        last = layers[n - 1]
        u = last.input_layernorm(branch) + config.residual_mix * ref.hidden_states[n - 1][:, -1:]
        if hasattr(last, "pre_feedforward_layernorm"):  # Gemma: its own norms around the MLP
            z = u + last.post_feedforward_layernorm(last.mlp(last.pre_feedforward_layernorm(u)))
        else:
            z = u + last.mlp(last.post_attention_layernorm(u))
        # hidden_states[L] is the normed final state
        cd = model.get_output_embeddings()(adapter.final_norm()(z) + config.final_mix * ref.hidden_states[n][:, -1:])
    if branch_only:
        return cd[:, -1]
    fused, _ = only_fuse(ref.logits[:, -1], cd[:, -1], config.alpha_pos, config.alpha_neg, config.gamma, config.beta)
    return fused


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
@pytest.mark.parametrize("gamma", [0.2, 5.0])  # contrastive (the tiny models' d is ~0.5) and collaborative
def test_only_equals_recomputation_from_eager_attentions(load, family, gamma):
    model, proc = load(family)
    batch = one(proc, family)
    config = ONLYConfig(gamma=gamma)
    expected = only_recomputed(model, batch, config)
    ref = plain(model, batch).logits
    out, report, _ = steered(model, config, batch)
    torch.testing.assert_close(out[:, -1], expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(out[:, :-1], ref[:, :-1])
    assert report["only"]["collaborative_steps"] == (1 if gamma == 5.0 else 0)


def test_dola_and_only_share_the_lm_head_call(load):
    """Both append rows to the one LM head call; each gets its own rows back: ONLY then fuses DoLa's scores."""
    model, proc = load("llava")
    batch = one(proc, "llava")
    only = ONLYConfig(gamma=5.0)
    branch = only_recomputed(model, batch, only, branch_only=True)
    ref = plain(model, batch, output_hidden_states=True)
    head = model.get_output_embeddings()
    with torch.no_grad():
        early = torch.stack([head(ref.hidden_states[j][:, -1]) for j in (0, 2)])
    dola, _ = dola_logits(ref.logits[:, -1], early)
    expected, _ = only_fuse(dola, branch, only.alpha_pos, only.alpha_neg, only.gamma, only.beta)
    out, report, _ = steered(model, [DoLaConfig(layers=(0, 2)), only], batch)
    torch.testing.assert_close(out[:, -1], expected, atol=1e-4, rtol=1e-4)
    assert report["only"]["steps"] == 1 and sum(report["dola"]["chosen_layer_counts"].values()) == 1


# ------------------------------------------------------------------------------------------- engine properties
CONFIGS = {
    "dola": lambda: DoLaConfig(layers=(0, 2)),
    "vista": lambda: VISTAConfig(strength=0.5),
    "only": lambda: ONLYConfig(),
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_left_padded_batch_equals_each_sample_alone(load, family, method):
    model, proc = load(family)
    images = [make_image(0, size=(96, 40)), make_image(1, size=(50, 90))]
    prompts = [PROMPT, "cat"]
    batch = build_inputs(proc, images, prompts)
    assert int(batch["attention_mask"].sum(1).min()) < batch["attention_mask"].shape[1]  # left-padded
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with vlm_attn.apply(model, CONFIGS[method]()), torch.no_grad():
        both = model.generate(**batch, **kw)
        for i in range(2):
            alone = model.generate(**build_inputs(proc, [images[i]], [prompts[i]]), **kw)
            assert torch.equal(both.sequences[i, -6:], alone.sequences[0, -6:])
            for step_both, step_alone in zip(both.logits, alone.logits):
                torch.testing.assert_close(step_both[i], step_alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["dola", "only"])
def test_kv_cache_equals_recomputation_without_cache(load, method):
    """Each cached decode step's scores equal a fresh uncached forward over the prompt and the tokens so far."""
    model, proc = load("llava")
    batch = one(proc, "llava")
    with vlm_attn.apply(model, CONFIGS[method]()), torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        prompt = batch["input_ids"].shape[1]
        for step, scores in enumerate(gen.logits):
            ids = gen.sequences[:, : prompt + step]
            full = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"],
                         use_cache=False).logits[:, -1]
            torch.testing.assert_close(scores, full, atol=1e-4, rtol=1e-4)


def test_vista_cached_steps_equal_one_continuation_forward(load):
    """VISTA's vectors belong to the prompt (made at its prefill): the cached decode steps equal one forward over
    all generated tokens on the prompt's cache, which reuses the same vectors."""
    model, proc = load("llava")
    batch = one(proc, "llava")
    with vlm_attn.apply(model, VISTAConfig(strength=0.5)), torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        prefill = model(**batch, use_cache=True)
        torch.testing.assert_close(prefill.logits[:, -1], gen.logits[0], atol=1e-5, rtol=1e-5)
        new = gen.sequences[:, batch["input_ids"].shape[1] : -1]
        mask = torch.cat([batch["attention_mask"], torch.ones_like(new)], dim=1)
        cont = model(input_ids=new, attention_mask=mask, cache=prefill.cache, use_cache=True).logits
    for step in range(1, 5):
        torch.testing.assert_close(cont[:, step - 1], gen.logits[step], atol=1e-4, rtol=1e-4)


def test_composes_with_attention_methods(load):
    """DoLa on top of PAI contrasts PAI's steered hidden states: the same as DoLa recomputed from PAI's forward."""
    model, proc = load("llava")
    batch = one(proc, "llava")
    pai = vlm_attn.PAIConfig(alpha=3.0, guidance=False)
    with vlm_attn.apply(model, pai):
        ref = plain(model, batch, output_hidden_states=True)
    head = model.get_output_embeddings()
    with torch.no_grad():
        early = torch.stack([head(ref.hidden_states[j][:, -1]) for j in (0, 2)])
    expected, _ = dola_logits(ref.logits[:, -1], early)
    with vlm_attn.apply(model, [pai, DoLaConfig(layers=(0, 2))]) as handle, torch.no_grad():
        out = model(**batch).logits
        report = handle.report()
    torch.testing.assert_close(out[:, -1], expected, **EXACT)
    assert report["pai"]["active"] and report["dola"]["active"]
    # all three same-forward methods with VAR run together and generate
    var = vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0)
    with vlm_attn.apply(model, [var, VISTAConfig(), ONLYConfig(), DoLaConfig()]), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("config, message", [
    (lambda: DoLaConfig(layers=(0, 9)), r"DoLaConfig.layers \[9\] out of range for a model with 4 decoder layers"),
    (lambda: VISTAConfig(steer_layers=(4,)), r"VISTAConfig.steer_layers \[4\] out of range .*allowed 0..3"),
    (lambda: VISTAConfig(sla_layers=(2, 7)), r"VISTAConfig.sla_layers \[7\] out of range"),
    (lambda: ONLYConfig(layer=4), r"ONLYConfig.layer \[4\] out of range"),
])
def test_layer_out_of_range_is_refused_and_the_model_left_alone(load, config, message):
    model, proc = load("llava")
    batch = one(proc, "llava")
    ref = plain(model, batch).logits
    pai = vlm_attn.PAIConfig(alpha=1.0, guidance=False)
    with pytest.raises(ValueError, match=message):
        vlm_attn.apply(model, [pai, config()])
    assert not hasattr(model, "_vlm_attn_handle") and not model._forward_pre_hooks and not model._forward_hooks
    assert torch.equal(plain(model, batch).logits, ref)


@pytest.mark.parametrize("argv, expected", [
    (["--method", "dola", "--dola-alpha", "-1"], "DoLaConfig.alpha must be a number >= 0, got -1.0"),
    (["--method", "vista", "--vista-sla-mix", "2"], "VISTAConfig.sla_mix must be a number in [0, 1]"),
    (["--method", "only", "--only-gamma", "-0.5"], "ONLYConfig.gamma must be a number >= 0"),
    (["--method", "dola", "--dola-layers", "middle"], "DoLaConfig.layers must be 'low', 'high'"),
])
def test_cli_refuses_bad_settings_before_loading(argv, expected, capsys, monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr("vlm_attn.loading.load_model", forbidden)
    image = tmp_path / "x.png"
    make_image(0).save(image)
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", "toy-vlm", "--image", str(image), "--prompt", "hi", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_inspect_refuses_logit_methods_before_loading(capsys, monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the method was checked")

    monkeypatch.setattr("vlm_attn.loading.load_model", forbidden)
    with pytest.raises(SystemExit) as info:
        main(["inspect", "--model", "toy-vlm", "--prompt", "hi", "--method", "dola", "--out", str(tmp_path / "a.png")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "dola edits the decoded logits, not the attention map: run `vlm-attn generate --method dola`" in err
