"""OPERA (issue 15): the rules on hand-built maps, the beam search against transformers', rollback, every family."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

import vlm_attn
from vlm_attn.errors import UserError
from vlm_attn.methods.config import ConfigError
from vlm_attn.methods.opera import OPERAConfig, candidate_penalty, column_scores, rollback_target
from vlm_attn.passes import opera_search
from vlm_attn.passes.opera_search import opera_decoding
from vlm_attn.prompting import build_inputs

from .conftest import make_image
from .test_families import ALL_FAMILIES

PROMPT = "describe the image in detail"
SCORED = dict(do_sample=False, return_dict_in_generate=True, output_scores=True)


def batch(processor: Any, family: str = "llava", seed: int = 0) -> Any:
    size = (112, 112) if family.startswith("qwen") else (80, 60)
    return build_inputs(processor, [make_image(seed, size)], [PROMPT])


# ------------------------------------------------------------------------------------------- rules
def test_column_scores_hand_computed():
    window = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    # phi_0 = (2*1)(2*0.5)(2*0.25) = 1; phi_1 = (2*0.5)(2*0.25) = 0.5; phi_2 = 2*0.5 = 1; prefactor 0.1
    assert column_scores(window, 2.0, 0.1).tolist() == pytest.approx([0.1, 0.05, 0.1])


def planted(length: int, column: int, weight: float = 0.9) -> torch.Tensor:
    """A causal window where every row from `column` on puts `weight` on `column` (the rest spread evenly)."""
    w = torch.zeros(length, length)
    for i in range(length):
        w[i, : i + 1] = 1.0 / (i + 1)
        if i > column:
            w[i, : i + 1] = (1 - weight) / i
            w[i, column] = weight
    return w


def test_planted_column_is_penalised_and_located():
    config = OPERAConfig(first_tokens=10)
    over = planted(12, column=3)
    flat = planted(12, column=3, weight=1 / 12)
    pen, loc = candidate_penalty(torch.stack([over, flat]), torch.tensor([0.3, 0.3]), config)
    assert loc[0] == 3
    expected = 1e-7 * torch.prod(50.0 * over[3:, 3])
    assert pen[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert pen[0] > 100 * pen[1]  # the over-trusting candidate gets the far larger penalty


def test_first_tokens_use_image_reward():
    config = OPERAConfig(first_tokens=10)
    pen, _ = candidate_penalty(planted(10, column=3)[None], torch.tensor([0.25]), config)
    assert pen.tolist() == [-0.25]  # length 10 <= first_tokens: minus the image attention mass


def test_rollback_rule():
    config = OPERAConfig(threshold=15, min_rollback_location=10, num_attn_candidates=5)
    history = torch.full((3, 30), 2, dtype=torch.long)
    history[:, -16:] = 12  # 16 > 15 in every beam
    assert rollback_target(history, {}, config) == 12
    assert rollback_target(history[:, 1:], {}, OPERAConfig(threshold=16)) is None  # 16 is not more than 16
    assert rollback_target(history, {12: 5}, config) == 11  # cap reached: one position earlier
    assert rollback_target(history, {12: 5, 11: 5}, config) is None
    assert rollback_target(history, {}, OPERAConfig(rollback=False)) is None
    one_short = history.clone()
    one_short[1, -1] = 12
    one_short[1, -5] = 2  # beam 1 holds it 15 times only
    assert rollback_target(one_short, {}, config) is None
    low = torch.full((3, 30), 7, dtype=torch.long)
    assert rollback_target(low, {}, config) is None  # location 7 < min_rollback_location
    assert rollback_target(low, {}, OPERAConfig(min_rollback_location=7)) == 7


@pytest.mark.parametrize("bad", [dict(num_beams=1), dict(num_attn_candidates=0), dict(scale_factor=0.0),
                                 dict(penalty_weight=-1.0), dict(normalise_over="beams"), dict(rollback=1)])
def test_bad_settings(bad):
    with pytest.raises(ConfigError, match="OPERAConfig"):
        OPERAConfig(**bad)


# ------------------------------------------------------------------------------------------- search
def test_weight_zero_equals_transformers_beam_search(load):
    model, processor = load("llava")
    inputs = batch(processor)
    for beams in (2, 3):
        ref = model.generate(**inputs, num_beams=beams, max_new_tokens=10, **SCORED)
        cfg = OPERAConfig(num_beams=beams, num_attn_candidates=2 * beams, penalty_weight=0.0, rollback=False,
                          normalise_over="vocabulary")
        out = model.generate(**inputs, num_beams=beams, max_new_tokens=10, custom_generate=opera_decoding,
                             opera=cfg, **SCORED)
        assert torch.equal(out.sequences, ref.sequences)
        assert torch.allclose(out.sequences_scores, ref.sequences_scores, atol=1e-6)
        assert not hasattr(model, "_vlm_attn_engine")  # the capture engine is gone afterwards


def test_penalty_changes_the_search(load):
    model, processor = load("llava")
    inputs = batch(processor)
    kw = dict(num_beams=2, max_new_tokens=12, custom_generate=opera_decoding, **SCORED)
    plain = model.generate(**inputs, **kw, opera=OPERAConfig(num_beams=2, penalty_weight=0.0, rollback=False))
    strong = model.generate(**inputs, **kw, opera=OPERAConfig(num_beams=2, penalty_weight=1e9, first_tokens=0,
                                                               scale_factor=1e3, score_prefactor=1.0, rollback=False))
    assert not torch.equal(plain.sequences, strong.sequences)


@pytest.mark.parametrize("path", ["_refeed", "_reprefill"])  # prompt cache + response / the whole prefill again
def test_rollback_refeeds_the_named_prefix_and_matches_recomputation(load, monkeypatch, path):
    model, processor = load("llava")
    inputs = batch(processor)
    prompt_len = inputs["input_ids"].shape[1]
    fired, refed = [], []
    real_target, real_reprefill = opera_search.rollback_target, getattr(opera_search, path)
    if path == "_reprefill":
        monkeypatch.setattr(opera_search, "_can_refeed", lambda *a: False)

    def target_once(history, counts, config):  # name position 3 once, at the 7th response token
        if history.shape[1] == 7 and not fired:
            fired.append(True)
            return 3
        return real_target(history, counts, config)

    def spy(model_, capture, samples, *rest):
        out = real_reprefill(model_, capture, samples, *rest)
        s = samples[0]  # recomputation without cache, same prefix (the prompt's image inputs included)
        again = _recompute(model_, inputs, s.state["running"][0, :, : s.cur_len])
        refed.append((s.cur_len, torch.allclose(s.logits, again, atol=1e-4)))
        return out

    monkeypatch.setattr(opera_search, "rollback_target", target_once)
    monkeypatch.setattr(opera_search, path, spy)
    out = model.generate(**inputs, num_beams=2, max_new_tokens=12, custom_generate=opera_decoding,
                         opera=OPERAConfig(num_beams=2, num_attn_candidates=3), **SCORED)
    assert refed == [(prompt_len + 3, True)]  # re-decides response index 3, on a cache equal to recomputation
    assert out.sequences.shape[1] > prompt_len


def test_default_rule_rolls_back_on_this_model(load, caplog):
    model, processor = load("llava")
    caplog.set_level(logging.DEBUG, logger="vlm_attn.passes.opera_search")
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=1, min_rollback_location=1, first_tokens=1)
    out = model.generate(**batch(processor), num_beams=2, max_new_tokens=12, custom_generate=opera_decoding,
                         opera=cfg)
    assert any("rollback to response index" in r.message for r in caplog.records)
    assert out.shape[1] > batch(processor)["input_ids"].shape[1]


def test_bad_generate_settings_fail_before_any_forward(load):
    model, processor = load("llava")
    inputs = batch(processor)
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        cases = [
            (dict(num_beams=3, opera=OPERAConfig(num_beams=2)), "num_beams=3"),
            (dict(num_beams=2, do_sample=True, opera=OPERAConfig(num_beams=2)), "do_sample=False"),
            (dict(num_beams=2, use_cache=False, opera=OPERAConfig(num_beams=2)), "use_cache=True"),
            (dict(num_beams=2, opera="fast"), "OPERAConfig"),
        ]
        for kwargs, message in cases:
            with pytest.raises(UserError, match=message):
                model.generate(**inputs, max_new_tokens=3, custom_generate=opera_decoding, **kwargs)
        two = build_inputs(processor, [make_image(0), make_image(1)], [PROMPT, PROMPT])
        with vlm_attn.apply(model, vlm_attn.PAIConfig(guidance=False)), \
                pytest.raises(UserError, match="with attention methods applied decodes one prompt per generate call"):
            model.generate(**two, num_beams=2, max_new_tokens=3, custom_generate=opera_decoding,
                           opera=OPERAConfig(num_beams=2))
    finally:
        hook.remove()
    assert calls == []


def test_vlm_attn_generate_with_opera_and_var(load, monkeypatch):
    model, processor = load("llava")
    image = make_image(0)
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2)
    alone = vlm_attn.generate(model, processor, image, PROMPT, methods=[cfg], max_new_tokens=6)
    direct = model.generate(**batch(processor), num_beams=2, max_new_tokens=6, custom_generate=opera_decoding,
                            opera=cfg)
    n = batch(processor)["input_ids"].shape[1]
    assert alone.text == processor.batch_decode(direct[:, n:], skip_special_tokens=True)[0].strip()
    var = vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0)
    both = vlm_attn.generate(model, processor, image, PROMPT, methods=[cfg, var], max_new_tokens=6)
    assert "var" in both.report and both.report["var"]
    assert not hasattr(model, "_vlm_attn_handle")
    together, real = [], opera_search._one_forward_inputs
    monkeypatch.setattr(opera_search, "_one_forward_inputs", lambda *a: together.append(1) or real(*a))
    vlm_attn.generate(model, processor, image, PROMPT, methods=[cfg, var], max_new_tokens=6)
    assert together == []  # steered rows: one look-ahead forward per candidate (VAR edits many-row forwards
    vlm_attn.generate(model, processor, image, PROMPT, methods=[cfg], max_new_tokens=6)  # as chunks)
    assert together
    with pytest.raises(ValueError, match="num_beams=2: use greedy .* or set guidance=False"):
        vlm_attn.generate(model, processor, image, PROMPT, methods=[cfg, vlm_attn.PAIConfig()], max_new_tokens=6)
    assert not hasattr(model, "_vlm_attn_handle")
    pai = vlm_attn.generate(model, processor, image, PROMPT, methods=[cfg, vlm_attn.PAIConfig(guidance=False)],
                            max_new_tokens=6)
    assert pai.report["pai"]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family(load, family, monkeypatch):
    """Weight 0 equals transformers' beam search; the full method (rollback forced early) runs and stops, and
    gives what it gives with one look-ahead forward per candidate and a main forward per step (no kept
    candidates)."""
    model, processor = load(family)
    inputs = batch(processor, family)
    kw = dict(num_beams=2, max_new_tokens=5, **SCORED)
    ref = model.generate(**inputs, **kw)
    zero = OPERAConfig(num_beams=2, num_attn_candidates=4, penalty_weight=0.0, rollback=False,
                       normalise_over="vocabulary")
    out = model.generate(**inputs, **kw, custom_generate=opera_decoding, opera=zero)
    assert torch.equal(out.sequences, ref.sequences)
    full = OPERAConfig(num_beams=2, num_attn_candidates=3, threshold=0, min_rollback_location=1, first_tokens=1)
    together, real, real_rows, same, kept = [], opera_search._one_forward_inputs, opera_search._candidate_rows, [], []

    def candidate_rows(*args):  # the rows of one forward for all candidates == those of one forward each
        with monkeypatch.context() as m:  # first: this one crops its candidates from the cache again
            m.setattr(opera_search, "_one_forward_inputs", lambda *a: None)
            alone, alone_keys = real_rows(*args[:-1], False)[2:4]
        looked = real_rows(*args)
        same.append(torch.allclose(looked[2], alone, atol=1e-6) and torch.equal(looked[3], alone_keys))
        kept.append(looked[4] is not None)
        return looked

    monkeypatch.setattr(opera_search, "_one_forward_inputs", lambda *a: together.append(real(*a)) or together[-1])
    monkeypatch.setattr(opera_search, "_candidate_rows", candidate_rows)
    out = model.generate(**inputs, **kw, custom_generate=opera_decoding, opera=full)
    assert out.sequences.shape[1] > inputs["input_ids"].shape[1]
    # all candidates in one forward wherever every layer has full attention (gemma3's sliding layers: one each)
    assert all((t is None) == (family == "gemma3") for t in together) and together
    assert all(same) and len(same) >= 4
    assert any(kept) == (family != "gemma3")  # the look-ahead's chosen candidates kept as the next step
    monkeypatch.setattr(opera_search, "_candidate_rows", real_rows)
    monkeypatch.setattr(opera_search, "_one_forward_inputs", lambda *a: None)
    one_by_one = model.generate(**inputs, **kw, custom_generate=opera_decoding, opera=full)
    assert torch.equal(out.sequences, one_by_one.sequences)
    assert torch.allclose(out.sequences_scores, one_by_one.sequences_scores, atol=1e-5)


def prompts_of(processor: Any, family: str, seeds: tuple[int, ...] = (0, 1)) -> Any:
    """A left-padded batch of prompts of different lengths, one image each."""
    size = (112, 112) if family.startswith("qwen") else (80, 60)
    texts = ["describe the image", "describe the image in great detail please now", "what is it"][: len(seeds)]
    return [make_image(i, size) for i in seeds], texts


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_batch_equals_single_and_transformers(load, family):
    """A batch of prompts in one search: weight 0 equals transformers' batched beam search (tokens, scores); with
    rollbacks forced early each prompt gets what it gets alone (its own beams and rollback history)."""
    model, processor = load(family)
    images, texts = prompts_of(processor, family)
    both = build_inputs(processor, images, texts)
    kw = dict(num_beams=2, max_new_tokens=6, **SCORED)
    zero = OPERAConfig(num_beams=2, num_attn_candidates=4, penalty_weight=0.0, rollback=False,
                       normalise_over="vocabulary")
    ref = model.generate(**both, **kw)
    out = model.generate(**both, **kw, custom_generate=opera_decoding, opera=zero)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.allclose(out.sequences_scores, ref.sequences_scores, atol=1e-6)
    full = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=1, min_rollback_location=1, first_tokens=1)
    together = model.generate(**both, **kw, custom_generate=opera_decoding, opera=full)
    width = both["input_ids"].shape[1]
    got = processor.batch_decode(together.sequences[:, width:], skip_special_tokens=True)
    for i, (image, text) in enumerate(zip(images, texts)):
        one = build_inputs(processor, [image], [text])
        alone = model.generate(**one, **kw, custom_generate=opera_decoding, opera=full)
        assert got[i] == processor.batch_decode(alone.sequences[:, one["input_ids"].shape[1]:],
                                                skip_special_tokens=True)[0]
        assert torch.allclose(together.sequences_scores[i], alone.sequences_scores[0], atol=1e-4)


def test_a_rollback_in_one_prompt_leaves_the_others_alone(load, monkeypatch, caplog):
    """Three prompts; rollbacks happen (in some prompts, at different steps), the re-run prefills keep every
    prompt's own logits equal to recomputation without cache."""
    model, processor = load("llava")
    images, texts = prompts_of(processor, "llava", (0, 1, 2))
    caplog.set_level(logging.DEBUG, logger="vlm_attn.passes.opera_search")
    inputs = build_inputs(processor, images, texts)
    checked, real = [], opera_search._reprefill

    def spy(model_, capture, samples, *rest):
        out = real(model_, capture, samples, *rest)
        for s in samples:
            if s.done:
                continue
            one = build_inputs(processor, [images[samples.index(s)]], [texts[samples.index(s)]])
            pad = inputs["input_ids"].shape[1] - one["input_ids"].shape[1]  # the batch's left padding of this prompt
            again = _recompute(model_, one, s.state["running"][0, :, pad : s.cur_len])
            checked.append(torch.allclose(s.logits, again, atol=1e-4))
        return out

    monkeypatch.setattr(opera_search, "_reprefill", spy)
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=1, min_rollback_location=1, first_tokens=1)
    model.generate(**inputs, num_beams=2, max_new_tokens=10, custom_generate=opera_decoding, opera=cfg)
    assert sum("rollback to response index" in r.message for r in caplog.records) >= 2
    assert checked and all(checked)


def test_paint_with_opera_stays_active_through_beams_and_rollbacks(load, caplog):
    """PAINT's vision scores are taken once per image, before generate expands the prompt into beams: every beam
    row gets its image's selection, and a re-run prefill (after a rollback) reuses it."""
    model, processor = load("llava")
    image = make_image(0)
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=1, min_rollback_location=1, first_tokens=1)
    caplog.set_level(logging.DEBUG)
    paint = vlm_attn.PAINTConfig(guidance=False)
    result = vlm_attn.generate(model, processor, image, "describe the image", methods=[cfg, paint], max_new_tokens=10)
    assert any("rollback to response index" in r.message for r in caplog.records)
    assert not any("PAINT is inactive" in r.message for r in caplog.records)
    assert result.report["paint"]["active"] and result.report["paint"]["images"] == 2  # one image, two beam rows
    plain = vlm_attn.generate(model, processor, image, "describe the image", methods=[cfg], max_new_tokens=10)
    assert plain.text != result.text


def test_eval_batch_equals_single(load, tmp_path, monkeypatch):
    """A batch of prompts (eval runner, batch_size 2): each prompt its own beams and rollback history, so every
    answer equals the one-prompt `vlm_attn.generate` answer."""
    from vlm_attn.eval.runner import Sample, run_samples

    model, processor = load("llava")
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=1, min_rollback_location=1, first_tokens=1)
    images = [make_image(0), make_image(1), make_image(2)]
    samples = [Sample(id=str(i), prompt=PROMPT, image=im) for i, im in enumerate(images)]
    records = run_samples(model, processor, samples, tmp_path / "run", settings={"task": "test"}, configs=[cfg],
                          batch_size=2, max_new_tokens=6, progress=False)
    single = [vlm_attn.generate(model, processor, im, PROMPT, methods=[cfg], max_new_tokens=6).text for im in images]
    assert [r["output"] for r in records] == single
    assert len(set(single)) > 1  # the prompts really differ
    searches = []
    real = opera_search._search
    monkeypatch.setattr(opera_search, "_search", lambda m, ids, *a: searches.append(ids.shape[0]) or real(m, ids, *a))
    run_samples(model, processor, samples, tmp_path / "again", settings={"task": "test"}, configs=[cfg],
                batch_size=2, max_new_tokens=6, progress=False)
    assert searches == [4, 2]  # two prompts x two beams in one search, then the last prompt


# ------------------------------------------------------------------------------------------- attention rows
def test_rows_come_from_our_attention_function_and_equal_the_eager_maps(load):
    """The row OPERA reads at a decode step is the last layer's attention of the fed token, max over heads, as the
    eager attention's `output_attentions` gives it; OPERA's own forwards never ask for `output_attentions`."""
    from vlm_attn.engine import capturing
    from vlm_attn.patches.base import get_adapter

    model, processor = load("llava")
    inputs = batch(processor)
    capture = opera_search.LastLayerRow()
    with torch.no_grad(), capturing(model, capture, get_adapter(model)):
        seq = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    ours, image_keys = capture.take()  # the one decode step: the first new token fed
    ours = ours[:, 0]
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(**dict(inputs, input_ids=seq[:, :-1], attention_mask=torch.ones_like(seq[:, :-1])),
                    output_attentions=True).attentions[-1][:, :, -1, :].max(dim=1).values
    assert ours.shape == ref.shape == (1, seq.shape[1] - 1)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert image_keys.sum() == (inputs["input_ids"] == model.config.image_token_id).sum()

    model.set_attn_implementation("sdpa")
    asked = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: asked.append(kw.get("output_attentions")),
                                           with_kwargs=True)
    try:
        model.generate(**inputs, num_beams=2, max_new_tokens=4, custom_generate=opera_decoding,
                       opera=OPERAConfig(num_beams=2, num_attn_candidates=2))
    finally:
        hook.remove()
    assert len(asked) > 4 and not any(asked)


# ------------------------------------------------------------------------------------------- planted column
class PlantedColumn:
    """Plants an over-trust column into the rows OPERA reads: every response token after `column` (and, at the
    look-ahead, only the candidates in `candidates`, by logit rank) puts 90% of its attention on it."""

    def __init__(self, monkeypatch, prompt_len: int, column: int, candidates: set[int]):
        self.prompt_len, self.column, self.candidates = prompt_len, column, candidates
        self.looking, self.rank = False, 0
        real_take, real_rows, real_step = (opera_search.LastLayerRow.take, opera_search._rows_of,
                                           opera_search._opera_step)
        plant = self

        def put(row, q):  # 9x the row's mass on the column: 90% once renormalised
            row[:, q, plant.prompt_len + plant.column] = 9 * row[:, q].sum(dim=-1)

        def take(capture):  # the main forward's row (the look-ahead rows are planted in rows_of)
            row, keys = real_take(capture)
            if not plant.looking and row.shape[-1] - 1 - plant.prompt_len > plant.column:
                row = row.clone()
                put(row, 0)
            return row, keys

        def rows_of(model, capture, cache, inputs, fed):  # fed candidates, all at response index L - prompt_len
            plant.looking = True
            try:
                row, keys = real_rows(model, capture, cache, inputs, fed)
            finally:
                plant.looking = False
            if row.shape[-1] - fed - plant.prompt_len > plant.column:
                row = row.clone()
                for q in range(fed):
                    if plant.rank + q in plant.candidates:
                        put(row, q)
            plant.rank += fed
            return row, keys

        def step(*args, **kwargs):
            plant.rank = 0
            return real_step(*args, **kwargs)

        monkeypatch.setattr(opera_search.LastLayerRow, "take", take)
        monkeypatch.setattr(opera_search, "_rows_of", rows_of)
        monkeypatch.setattr(opera_search, "_opera_step", step)
        # the plant models the rows of a main forward per step: no look-ahead candidates kept as the next step
        monkeypatch.setattr(opera_search, "_keepable", lambda cache: False)


def test_planted_column_triggers_the_penalty_on_the_candidate_continuing_it(load, monkeypatch):
    model, processor = load("llava")
    inputs = batch(processor)
    prompt_len, column = inputs["input_ids"].shape[1], 2
    PlantedColumn(monkeypatch, prompt_len, column, candidates={0})  # the top candidate continues the column
    seen, steps = [], []
    real_penalty, real_step = opera_search.candidate_penalty, opera_search._opera_step

    def penalty(window, mass, config):
        pen, loc = real_penalty(window, mass, config)
        seen.append((window.shape[-1], pen, loc))
        return pen, loc

    def step(config, s, *rest):
        r, top2 = s.r, s.logits.topk(2, dim=-1).indices
        log_probs, target = real_step(config, s, *rest)
        steps.append((r, top2, log_probs))
        return log_probs, target

    monkeypatch.setattr(opera_search, "candidate_penalty", penalty)
    monkeypatch.setattr(opera_search, "_opera_step", step)
    # alpha large enough that the first planted column (two rows under it, ~1e-4) outweighs the logit gap
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=3, first_tokens=0, rollback=False, penalty_weight=1e5)
    model.generate(**inputs, num_beams=2, max_new_tokens=8, min_new_tokens=8, custom_generate=opera_decoding,
                   opera=cfg)
    planted = [(pen, loc) for length, pen, loc in seen if length >= column + 3]  # >= 2 planted rows under it
    assert len(planted) == 8 - column - 2
    for pen, loc in planted:
        assert (loc[:, 0] == column).all()  # the summary token is located
        assert (pen[:, 0] > 10 * pen[:, 1:].max(dim=1).values).all()  # and only the continuing candidate pays
    assert sum(r >= column + 2 for r, _, _ in steps) == 8 - column - 2
    for r, top2, log_probs in steps:
        first, second = log_probs.gather(1, top2).unbind(1)
        if r >= column + 2:  # the top-logit candidate now ranks below the second one, in every beam
            assert (first < second).all()


def test_planted_column_past_the_threshold_rolls_back_to_it(load, monkeypatch):
    model, processor = load("llava")
    inputs = batch(processor)
    prompt_len, column = inputs["input_ids"].shape[1], 3
    PlantedColumn(monkeypatch, prompt_len, column, candidates={0, 1})
    refed, real_reprefill = [], opera_search._reprefill

    def spy(model_, capture, samples, *rest):
        refed.append(samples[0].r)
        return real_reprefill(model_, capture, samples, *rest)

    monkeypatch.setattr(opera_search, "_reprefill", spy)
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=2, min_rollback_location=column, first_tokens=0)
    out = model.generate(**inputs, num_beams=2, max_new_tokens=16, min_new_tokens=16, custom_generate=opera_decoding,
                         opera=cfg)
    # located column 3 recorded a 3rd time (> threshold 2) in every beam: re-decide response index 3, twice (the
    # cap, num_attn_candidates), then one position earlier twice, then never again
    assert refed == [3, 3, 2, 2]
    assert out.shape[1] == prompt_len + 16
    plain = model.generate(**inputs, num_beams=2, max_new_tokens=16, min_new_tokens=16,
                           custom_generate=opera_decoding, opera=OPERAConfig(num_beams=2, num_attn_candidates=2,
                                                                             min_rollback_location=99))
    assert refed == [3, 3, 2, 2]  # no rollback below min_rollback_location
    assert not torch.equal(plain, out)


# ------------------------------------------------------------------------------------------- cache
def _recompute(model, inputs, prefix):
    """Last-position logits of `prefix` (beams, L) without any cache: the prompt's image inputs, one row per beam."""
    from vlm_attn.engine import unsteered
    from vlm_attn.patches.base import get_adapter

    beams, prompt_len = prefix.shape[0], inputs["input_ids"].shape[1]
    full = {}
    for key, value in inputs.items():
        value = value.repeat_interleave(beams, 0) if value.shape[0] == 1 else value
        if key != "input_ids" and value.dim() == 2 and value.shape[1] == prompt_len:  # per-token masks and types
            fill = int(key == "attention_mask")
            value = torch.nn.functional.pad(value, (0, prefix.shape[1] - prompt_len), value=fill)
        full[key] = value
    full["input_ids"] = prefix
    with torch.no_grad(), unsteered(model):
        logits = model(**full, use_cache=False).logits[:, -1].float()
    logits[:, get_adapter(model).image_token_ids()] = -float("inf")  # never chosen while rollback is on
    return logits


@pytest.mark.parametrize("family", ["llava", "gemma3"])  # gemma3: sliding-window layers shorter than the prompt
def test_kv_cache_equals_recomputation_at_every_step(load, family, monkeypatch):
    """After the look-ahead forwards (fed, then cropped) and after rollbacks, each step's logits equal those of the
    same prefix recomputed without cache."""
    model, processor = load(family)
    inputs = batch(processor, family)
    PlantedColumn(monkeypatch, inputs["input_ids"].shape[1], 2, candidates={0, 1})  # rollbacks to 2, then 1
    checked, real_main, real_reprefill = [], opera_search._main_forward, opera_search._reprefill

    def check(kind, real):
        def spy(model_, capture, samples, *rest):
            out = real(model_, capture, samples, *rest)
            s = samples[0]
            if not s.done:
                again = _recompute(model_, inputs, s.state["running"][0, :, : s.cur_len])
                checked.append((kind, torch.allclose(s.logits, again, atol=1e-4)))
            return out
        return spy

    monkeypatch.setattr(opera_search, "_main_forward", check("step", real_main))
    monkeypatch.setattr(opera_search, "_reprefill", check("rollback", real_reprefill))
    monkeypatch.setattr(opera_search, "_refeed", check("rollback", opera_search._refeed))
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=2, threshold=1, min_rollback_location=2, first_tokens=0)
    model.generate(**inputs, num_beams=2, max_new_tokens=10, min_new_tokens=10, custom_generate=opera_decoding,
                   opera=cfg)
    assert [kind for kind, _ in checked].count("rollback") == 4
    assert all(ok for _, ok in checked), checked


@pytest.mark.parametrize("family", ["llava", "idefics3"])  # idefics3: text between image tiles
def test_kept_candidates_equal_recomputation_at_every_step(load, family, monkeypatch):
    """Where the look-ahead's chosen candidates are kept in the cache as the next step (no main forward), each
    step's logits equal those of the same prefix recomputed without cache, rollbacks included, and the whole search
    equals the one with a main forward per step."""
    model, processor = load(family)
    inputs = batch(processor, family)
    checked, real_main, real_keep = [], opera_search._main_forward, opera_search._keep_chosen
    kept = []
    monkeypatch.setattr(opera_search, "_keep_chosen", lambda *a: kept.append(1) or real_keep(*a))

    def spy(model_, capture, samples, *rest):
        out = real_main(model_, capture, samples, *rest)
        for s in samples:
            if not s.done:
                again = _recompute(model_, inputs, s.state["running"][0, :, : s.cur_len])
                checked.append(torch.allclose(s.logits, again, atol=1e-4))
        return out

    monkeypatch.setattr(opera_search, "_main_forward", spy)
    cfg = OPERAConfig(num_beams=2, num_attn_candidates=3, threshold=0, min_rollback_location=1, first_tokens=1)
    kw = dict(num_beams=2, max_new_tokens=8, min_new_tokens=8, custom_generate=opera_decoding, opera=cfg, **SCORED)
    out = model.generate(**inputs, **kw)
    assert len(kept) >= 3 and len(checked) >= 3 and all(checked), checked
    monkeypatch.setattr(opera_search, "_keepable", lambda cache: False)
    again = model.generate(**inputs, **kw)
    assert torch.equal(out.sequences, again.sequences)
    assert torch.allclose(out.sequences_scores, again.sequences_scores, atol=1e-5)


# ------------------------------------------------------------------------------------------- CLI, eval
def test_eval_cli_with_opera_equals_vlm_attn_generate(tmp_path):
    """`vlm-attn eval chair --method opera` writes what `vlm_attn.generate` gives and records OPERA's settings."""
    import json

    from vlm_attn.cli import main
    from vlm_attn.loading import load_model

    from .test_entry_points import IMAGE, NEW_TOKENS, _mini_coco
    from .test_entry_points import PROMPT as CAPTION

    model, processor = load_model("toy-vlm")
    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps({"opera": {"num_beams": 3, "num_attn_candidates": 2, "threshold": 1,
                                             "min_rollback_location": 1, "first_tokens": 1}}))
    out = tmp_path / "run"
    assert main(["eval", "chair", "--model", "toy-vlm", "--method", "opera", "--method-config", str(methods),
                 "--coco-root", str(_mini_coco(tmp_path / "coco")), "--out", str(out), "--max-new-tokens",
                 str(NEW_TOKENS), "--lemmatizer", "offline", "--no-progress", "--batch-size", "2"]) == 0
    cfg = OPERAConfig(num_beams=3, num_attn_candidates=2, threshold=1, min_rollback_location=1, first_tokens=1)
    expected = vlm_attn.generate(model, processor, IMAGE, CAPTION, methods=[cfg], max_new_tokens=NEW_TOKENS).text
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["output"] == expected
    recorded = json.loads((out / "run.json").read_text())["methods"]
    assert recorded[0]["name"] == "opera" and recorded[0]["config"]["num_beams"] == 3
    generation = json.loads((out / "metrics.json").read_text())["provenance"]["generation"]
    assert generation["greedy"] is False and generation["decoding"] == "opera beam search"
    assert generation["num_beams"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--method", "opera", "--opera-num-beams", "1"], "OPERAConfig.num_beams"),
    (["--method", "opera", "--opera-normalise-over", "beams"], "OPERAConfig.normalise_over"),
    (["--method", "opera", "--method", "funnel"], "--method opera (a decoding method) does not combine with "
                                                  "--method funnel"),
])
def test_cli_bad_opera_settings_are_one_line_errors(argv, message, capsys, monkeypatch, tmp_path):
    """Refused before any model is loaded, in one line, exit status 2 (generate and eval alike)."""
    from vlm_attn.cli import main

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr("vlm_attn.loading.load_model", forbidden)
    for command in (["generate"], ["eval", "pope", "--out", str(tmp_path / "run")]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--model", "toy-vlm", "--max-new-tokens", "2", *argv])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and message in err and len(err.splitlines()) == 1, err
