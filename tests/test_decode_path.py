"""The decode fast path: when a step's one row is recomputed in every sample, SDPA is not run a second time."""

import pytest
import torch

import vlm_attn
from vlm_attn.engine import attention
from vlm_attn.engine.method import AttentionMethod, Tally
from vlm_attn.methods.pai import PAIMethod
from vlm_attn.methods.paint import PAINTMethod
from vlm_attn.methods.var import VARMethod

from .test_engine import VAR, inputs

CONFIGS = {
    "pai": lambda: vlm_attn.PAIConfig(alpha=0.5, guidance=False),
    "paint": lambda: vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False),
    "var": lambda: vlm_attn.VARConfig(p=0.9, rho=0.0, image_mass=0.01, **VAR),
}


def _count_base_calls(monkeypatch):
    """Record (layer, query rows) of every base SDPA call made through our attention function."""
    calls = []
    real = attention.sdpa_attention_forward

    def counting(module, query, *args, **kwargs):
        calls.append((module.layer_idx, query.shape[2]))
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", counting)
    return calls


def _generate(model, batch, n=5):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_decode_rows_redone_everywhere_skip_sdpa(load, monkeypatch, method):
    model, proc = load("llava")
    calls = _count_base_calls(monkeypatch)
    with vlm_attn.apply(model, CONFIGS[method]()) as handle:
        _generate(model, inputs(proc, n=2, seeds=[0, 1]))
        steered = handle.engine.methods[0].layers
    decode_layers = {layer for layer, rows in calls if rows == 1}
    assert steered and not decode_layers & set(steered)  # no SDPA at decode in the steered layers...
    assert decode_layers == set(range(len(model.model.language_model.layers))) - set(steered)  # ...only elsewhere
    assert {layer for layer, rows in calls if rows > 1} == set(range(len(model.model.language_model.layers)))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_skipped_sdpa_gives_the_same_generation(load, monkeypatch, method):
    model, proc = load("llava")
    batch = inputs(proc, n=2, seeds=[0, 1])
    with vlm_attn.apply(model, CONFIGS[method]()):
        fast_ids, fast_scores = _generate(model, batch)
    # the same run with the skip disabled: SDPA for every head, explicit values written over the edited ones
    for cls in (PAIMethod, PAINTMethod, VARMethod):
        monkeypatch.setattr(cls, "decode_rows_cover_all", AttentionMethod.decode_rows_cover_all)
    calls = _count_base_calls(monkeypatch)
    with vlm_attn.apply(model, CONFIGS[method]()):
        slow_ids, slow_scores = _generate(model, batch)
    assert any(rows == 1 and layer >= 2 for layer, rows in calls)  # the slow run did call SDPA at decode
    assert torch.equal(fast_ids, slow_ids)
    torch.testing.assert_close(fast_scores, slow_scores, atol=1e-5, rtol=1e-5)


def test_tally_counts_flags_per_layer():
    tally = Tally(3)
    tally.add(1, torch.tensor([[True, False, True]]))
    tally.add(1, torch.tensor([[True]]))
    tally.add(2, torch.zeros(2, 4, 1, dtype=torch.bool))
    assert tally.per_layer() == [0, 3, 0]
    for _ in range(Tally.COMPACT_EVERY * 2 + 5):  # folded into counts along the way, same totals
        tally.add(0, torch.tensor([[True, True]]))
    assert len(tally._parts[0]) < Tally.COMPACT_EVERY
    assert tally.per_layer() == [2 * (Tally.COMPACT_EVERY * 2 + 5), 3, 0]


def test_sample_without_image_stays_imageless_through_decode():
    from vlm_attn.engine.method import CallState, LayerView, last_row

    call = CallState(image_mask=torch.tensor([[False, True, True, False], [False, False, False, False]]))
    assert call.first_image().tolist()[0] == 1
    for _ in range(3):  # decode steps: text tokens only
        call.extend(torch.zeros(2, 1, dtype=torch.bool))
        parts = call.view_parts(1, call.seq_len)
        assert parts["text_after_image"].tolist() == [[True], [False]]
        assert not call.all_have_image()
    view = LayerView(2, call, parts)
    assert last_row(view).tolist() == [[True], [False]]
