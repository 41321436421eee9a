"""OPERA's beam search as a transformers 5.x `custom_generate` callable (rules: `vlm_attn.methods.opera`).

    out = model.generate(**inputs, num_beams=5, max_new_tokens=64, custom_generate=opera_decoding,
                         opera=OPERAConfig())

`model.generate` prepares everything as for its own beam search (inputs expanded per beam, cache, logits
processors, stopping criteria) and hands the loop to `opera_decoding`. Each prompt of the batch is its own search
(`_Sample`: beams, snapshots, rollback counts), kept with transformers' own beam-search bookkeeping
(`_get_top_k_continuations`, `_update_finished_beams`, ...) called per prompt, so with penalty 0, no rollback and the
"vocabulary" normaliser it is transformers' beam search, token for token and score for score, batch included.

The forwards are shared by the whole batch: one main forward per step and one look-ahead forward for the
candidates of every beam of every prompt. Attention rows come from our attention function: an observe-only engine
method asks for the one query row of the last decoder layer and keeps its max over heads; every other layer and head
stays plain SDPA. The look-ahead forwards run on the live KV cache, which is cropped back afterwards.

A rollback gives a prompt a shorter sequence than the others. The batch then re-runs its prefill on every prompt's
current sequence, left-padded anew (`_reprefill`): the image features generate encoded once are reused, positions
and masks are those of the first prefill re-laid, so each row sees exactly what a run of its prompt alone sees, on
every family (sliding-window layers included). Rows of prompts already finished are fed filler tokens.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import torch
from torch import nn

from ..engine import capturing, engine_of, keep_text_tokens, lookahead, replaying, truncate_call
from ..engine.method import AttentionMethod, LayerView, RowSet
from ..errors import UserError
from ..methods.opera import OPERAConfig, beam_location, candidate_penalty, normalise_rows, rollback_target
from ..patches.base import get_adapter

logger = logging.getLogger(__name__)

# Per-token generate kwargs (as transformers' chunked prefill lists them) and the value a padding column takes.
PER_TOKEN_KEYS = {"attention_mask": 0, "position_ids": 1, "token_type_ids": 0, "mm_token_type_ids": 0,
                  "moe_mm_token_type_ids": 0}


class _RowTaken(Exception):
    """Ends a look-ahead forward once the last layer's row is read (its MLP, norm and LM head are not needed)."""


class LastLayerRow(AttentionMethod):
    """Observe-only: the last layer's attention rows of the fed tokens, max over heads.

    Decode steps: the one fed token's row. Look-ahead forwards: every fed candidate's row, then the forward is
    ended (`stop`) or run on to its logits (`every_row`). A re-run prefill (`prefill_row`): the last position's row.
    """

    name = "opera_rows"

    def __init__(self) -> None:
        self.layer = -1
        self.latest: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows (B, Q, K), image keys (B, K))
        self.stop = False  # look-ahead forwards: rows of every fed token, then raise _RowTaken
        self.every_row = False  # a look-ahead run on to its logits: rows of every fed token, no stop
        self.prefill_row = False  # a re-run prefill: the last query row

    def bind(self, model: nn.Module, adapter: Any, num_layers: int) -> None:
        self.layer = num_layers - 1

    def rows(self, view: LayerView) -> torch.Tensor | None:
        if view.layer_idx != self.layer:
            return None
        if view.prefill:
            if not self.prefill_row:
                return None
            last = torch.zeros_like(view.query_image)
            last[:, -1] = True
            return last
        if view.query_image.shape[1] != 1 and not (self.stop or self.every_row):
            return None
        return torch.ones_like(view.query_image)

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> None:
        if view.prefill:  # other methods' rows may be gathered too: keep this method's one row per sample
            at = rows.own.long().argmax(dim=1)[:, None, None, None].expand(-1, probs.shape[1], 1, probs.shape[-1])
            probs = probs.gather(2, at)
        self.latest = (probs.max(dim=1).values, view.image_keys)
        if self.stop:  # the KV cache already holds this token at every layer: crop(-1) undoes it
            raise _RowTaken
        return None

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (B, Q, K) of the latest forward's Q fed tokens, image keys (B, K)); each forward's rows once."""
        if self.latest is None:
            raise RuntimeError("OPERA: the last decoder layer's attention row was not captured in this forward")
        out, self.latest = self.latest, None
        return out


def opera_decoding(
    model: nn.Module,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    opera: OPERAConfig | None = None,
    **model_kwargs: Any,
) -> Any:
    """OPERA beam search for `model.generate(..., custom_generate=opera_decoding, opera=OPERAConfig())`.

    Takes a batch of prompts (each its own beams and rollback history). Returns what transformers' beam search
    returns (sequences, or a `GenerateBeamDecoderOnlyOutput` with `sequences_scores` when
    `return_dict_in_generate=True, output_scores=True`).
    """
    config = opera if opera is not None else OPERAConfig(num_beams=generation_config.num_beams)
    check_settings(config, generation_config, input_ids.shape[0], model_kwargs)
    engine = engine_of(model)
    if input_ids.shape[0] > config.num_beams and engine is not None and engine.methods:
        raise UserError("OPERA with attention methods applied decodes one prompt per generate call: a rollback "
                        "re-runs the batch's prefill, where those methods' edits differ from their decode-step edits, "
                        "so the other prompts would change; call generate once per prompt (vlm-attn eval does)")
    capture = LastLayerRow()
    with capturing(model, capture, get_adapter(model), steered=True):
        return _search(model, input_ids, logits_processor, stopping_criteria, generation_config, config, capture,
                       model_kwargs)


def check_settings(config: Any, generation_config: Any, rows: int, model_kwargs: dict[str, Any]) -> None:
    """Refuse what this loop does not run, with the fix, before any forward."""
    if not isinstance(config, OPERAConfig):
        raise UserError(f"opera= must be an OPERAConfig, got {type(config).__name__}")
    beams = generation_config.num_beams
    if beams != config.num_beams:
        raise UserError(f"OPERA: generate got num_beams={beams} but OPERAConfig.num_beams={config.num_beams}: "
                        "pass the same value to both (vlm_attn.generate does)")
    if generation_config.do_sample:
        raise UserError("OPERA runs beam search without sampling: pass do_sample=False")
    if rows % beams:
        raise UserError(f"OPERA got {rows} input rows for num_beams={beams}: call it through model.generate, "
                        "which repeats each prompt once per beam")
    if not model_kwargs.get("use_cache", True):
        raise UserError("OPERA needs the KV cache (its look-ahead forwards are cropped from it): pass use_cache=True")
    if generation_config.num_return_sequences > beams:
        raise UserError("num_return_sequences must be <= num_beams")


class _Sample:
    """One prompt's search: its beams' state in transformers' beam-search layout (batch 1), the snapshots a
    rollback returns to, the rollback counts and the (beam, token) choices a rollback forbids.

    Sequences are in the batch's padded coordinates (the prompt's left padding included), as transformers keeps them.
    """

    def __init__(self, index: int, prompt: torch.Tensor, generation_config: Any, fill: int) -> None:
        beams, self.prompt_len = prompt.shape
        device = prompt.device
        self.rows = slice(index * beams, (index + 1) * beams)
        length = generation_config.max_length
        running = torch.full((1, beams, length), fill, dtype=torch.long, device=device)
        running[0, :, : self.prompt_len] = prompt
        self.state = {
            "running": running,
            "running_scores": torch.cat([torch.zeros(1, 1), torch.full((1, beams - 1), -1e9)], 1).to(device),
            "running_indices": torch.full((1, beams, length - self.prompt_len), -1, dtype=torch.int32, device=device),
            "sequences": running.clone(),
            "scores": torch.full((1, beams), -1e9, device=device),
            "finished": torch.zeros(1, beams, dtype=torch.bool, device=device),
            "can_improve": torch.ones(1, 1, dtype=torch.bool, device=device),
            "hist": torch.zeros(beams, 0, 0, device=device),  # response rows over response columns (normalised)
            "locs": torch.zeros(beams, 0, dtype=torch.long, device=device),  # per-beam location per step
        }
        self.state["indices"] = self.state["running_indices"].clone()
        self.cur_len = self.prompt_len
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.counts: dict[int, int] = {}
        self.rejected: dict[int, torch.Tensor] = {}
        self.redo: int | None = None  # response index being re-decided after a rollback
        self.done = False
        self.logits: torch.Tensor | None = None  # (beams, V) next-token logits of the running beams
        self.beam_idx: torch.Tensor | None = None  # this step's beam reorder

    @property
    def r(self) -> int:
        """Response tokens so far."""
        return self.cur_len - self.prompt_len

    def snapshot(self, window: int) -> None:
        self.snapshots[self.r] = {k: v.clone() for k, v in self.state.items()}
        self.snapshots.pop(self.r - window, None)

    def redoing(self) -> bool:
        return self.redo == self.r

    def redo_log_probs(self) -> torch.Tensor:
        """Log-probs of the re-decided step: the choices made here before are forbidden."""
        log_probs = torch.log_softmax(self.logits, dim=-1)
        log_probs.view(-1)[self.rejected[self.r]] = -float("inf")
        self.redo = None
        return log_probs

    def roll_back(self, target: int) -> None:
        """Back to the state before response index `target` was decided; forbid what each beam chose there."""
        self.counts[target] = self.counts.get(target, 0) + 1
        chosen, vocab = self.snapshots[target + 1], self.logits.shape[-1]
        pairs = chosen["running_indices"][0, :, target].long() * vocab + chosen["running"][0, :, self.prompt_len
                                                                                             + target]
        self.rejected[target] = torch.cat([self.rejected.get(target, pairs[:0]), pairs]).unique()
        self.state = {k: v.clone() for k, v in self.snapshots[target].items()}
        for k in [k for k in self.snapshots if k > target]:
            del self.snapshots[k]
        self.cur_len = self.prompt_len + target
        self.redo = target
        logger.debug("OPERA: rollback to response index %d (time %d)", target, self.counts[target])

    def advance(self, model: nn.Module, log_probs: torch.Tensor, logits_processor: Any, stopping_criteria: Any,
                generation_config: Any) -> None:
        """One step of transformers' beam search for this prompt: choose, keep finished beams, reorder."""
        state, beams, cur_len, prompt_len = self.state, self.logits.shape[0], self.cur_len, self.prompt_len
        eos = generation_config._eos_token_tensor
        beams_to_keep = max(2, 1 + (eos.shape[0] if eos is not None else 0)) * beams
        early_stopping, length_penalty = generation_config.early_stopping, generation_config.length_penalty
        log_probs = logits_processor(state["running"][0, :, :cur_len], log_probs)
        accumulated = (log_probs + state["running_scores"][0][:, None]).reshape(1, -1)
        topk_scores, topk_seqs, topk_indices = model._get_top_k_continuations(
            accumulated_log_probs=accumulated, running_sequences=state["running"],
            running_beam_indices=state["running_indices"], cur_len=cur_len, decoder_prompt_len=prompt_len,
            do_sample=False, beams_to_keep=beams_to_keep, num_beams=beams, batch_size=1)
        hits = stopping_criteria(topk_seqs[0, :, : cur_len + 1], None).view(1, beams_to_keep)
        state["running"], state["running_scores"], state["running_indices"] = (
            model._get_running_beams_for_next_iteration(
                topk_log_probs=topk_scores, topk_running_sequences=topk_seqs,
                topk_running_beam_indices=topk_indices, next_token_hits_stopping_criteria=hits, num_beams=beams))
        state["sequences"], state["scores"], state["indices"], state["finished"] = model._update_finished_beams(
            sequences=state["sequences"], topk_running_sequences=topk_seqs, beam_scores=state["scores"],
            topk_log_probs=topk_scores, beam_indices=state["indices"], topk_running_beam_indices=topk_indices,
            is_early_stop_heuristic_unsatisfied=state["can_improve"], is_sent_finished=state["finished"],
            next_token_hits_stopping_criteria=hits,
            top_num_beam_mask=torch.arange(beams_to_keep, device=hits.device) < beams, num_beams=beams,
            cur_len=cur_len, decoder_prompt_len=prompt_len, length_penalty=length_penalty,
            early_stopping=early_stopping)
        self.beam_idx = state["running_indices"][0, :, self.r].long()
        state["hist"] = state["hist"][self.beam_idx]
        self.cur_len += 1
        state["can_improve"] = model._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=state["can_improve"], running_beam_scores=state["running_scores"],
            beam_scores=state["scores"], is_sent_finished=state["finished"], cur_len=self.cur_len,
            max_length=generation_config.max_length, decoder_prompt_len=prompt_len, early_stopping=early_stopping,
            length_penalty=length_penalty)
        self.done = not bool(model._beam_search_has_unfinished_sequences(state["can_improve"], state["finished"],
                                                                         hits, early_stopping))

    def add_row(self, row: torch.Tensor) -> None:
        """Append the newest token's attention row (beams, K), normalised, response columns, to the history."""
        resp = normalise_rows(row.float())[:, row.shape[-1] - self.r:]  # (beams, R): the row's right end
        hist = torch.nn.functional.pad(self.state["hist"], (0, 1))  # one more column for the new token
        self.state["hist"] = torch.cat([hist, resp[:, None, :]], dim=1)


class _Batch:
    """The tokens the KV cache holds per row and where each row's content starts (rows are left-padded)."""

    def __init__(self, ids: torch.Tensor, start: torch.Tensor) -> None:
        self.ids, self.start = ids, start


def _search(model, input_ids, logits_processor, stopping_criteria, generation_config, config, capture, model_kwargs):
    beams = config.num_beams
    eos, pad = generation_config._eos_token_tensor, generation_config._pad_token_tensor
    fill = int(pad if pad is not None else (eos[0] if eos is not None else 0))
    samples = [_Sample(b, input_ids[b * beams:(b + 1) * beams], generation_config, fill)
               for b in range(input_ids.shape[0] // beams)]
    fresh = (dict(model_kwargs), copy.deepcopy(model_kwargs.get("cache")))  # what a re-run prefill starts from
    # With rollback on, image placeholder tokens are never chosen: a re-run prefill would read one in a response as
    # an image slot (and find no image features for it)
    blocked = get_adapter(model).image_token_ids() if config.rollback else []
    out = model._prefill(input_ids, generation_config, model_kwargs)
    model_kwargs = model._update_model_kwargs_for_generation(out, model_kwargs)
    _record_past(model_kwargs["cache"])
    _read_step(samples, out.logits, None, blocked)
    del out
    prompt = _prompt_cache(model, model_kwargs["cache"], beams)
    batch = _Batch(input_ids, torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device))
    while True:
        active = [s for s in samples if not s.done]
        looked = None
        if any(not s.redoing() for s in active):  # a prompt re-deciding a step may choose any token: no keeping
            keep = not any(s.redoing() for s in active)
            looked = _candidate_rows(model, config, capture, samples, batch.ids, model_kwargs, keep)
        rolled = False
        for s in samples:
            s.beam_idx = None  # set again by the prompts that take a step now
        for s in active:
            s.snapshot(config.window_size)
            if s.redoing():
                log_probs = s.redo_log_probs()
            else:
                log_probs, target = _opera_step(config, s, *looked[:4])
                if target is not None and target < s.r and target in s.snapshots:
                    s.roll_back(target)
                    rolled = True
                    continue
            s.advance(model, log_probs, logits_processor, stopping_criteria, generation_config)
        if all(s.done for s in samples):
            break
        if rolled and _can_refeed(samples, prompt, input_ids.shape[1]):
            batch, model_kwargs = _refeed(model, capture, samples, batch, model_kwargs, prompt, blocked)
        elif rolled:
            batch, model_kwargs = _reprefill(model, capture, samples, batch, generation_config, model_kwargs, fresh,
                                             fill, blocked)
        else:
            batch, model_kwargs = _main_forward(model, capture, samples, batch, model_kwargs, fill, blocked,
                                                looked)
    return _outputs(generation_config, samples, input_ids.shape[1], model_kwargs)


def _record_past(cache: Any) -> None:
    """Let sliding-window layers keep the states look-ahead tokens push out, so `crop` can restore them."""
    if not hasattr(cache, "crop") or not hasattr(cache, "reorder_cache"):
        raise UserError(f"OPERA needs a cache that can be cropped and reordered, got {type(cache).__name__}: use the "
                        "default dynamic cache (no cache_implementation)")
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()


def _main_forward(model, capture, samples, batch, model_kwargs, fill, blocked, looked=None):
    """Reorder the cache to the chosen beams, feed each beam's newest token, read logits and attention rows.

    When the look-ahead ran on to its logits and every beam chose one of its parent's candidates (always, unless a
    beam was refilled from below the candidates), that look-ahead already holds this forward's result: the chosen
    candidates' keys and values are kept in the cache and their logits and rows read, with no forward at all.
    """
    device = batch.ids.device
    order, new = [], []
    for s in samples:
        moved = s.beam_idx is not None  # the prompts that took a step (finished ones are fed filler tokens)
        order.append(s.rows.start + (s.beam_idx if moved else torch.arange(s.rows.stop - s.rows.start,
                                                                           device=device)))
        new.append(s.state["running"][0, :, s.cur_len - 1] if moved and not s.done
                   else torch.full((s.rows.stop - s.rows.start,), fill, device=device))
    order, new = torch.cat(order), torch.cat(new)
    ids = torch.cat([batch.ids[order], new[:, None]], dim=1)
    if looked is not None and looked[4] is not None:  # the look-ahead's candidates are still in the cache
        chosen = _chosen_candidates(samples, order, new, looked[1])
        if chosen is not None:
            model_kwargs = _keep_chosen(model, model_kwargs, order, chosen, looked[1].shape[1])
            logits, rows = looked[4][order, chosen], looked[2][order, chosen]  # (rows, V), (rows, L + 1)
            _read_step(samples, logits[:, None], rows[:, None], blocked)
            return _Batch(ids, batch.start), model_kwargs
        model_kwargs["cache"].crop(-looked[1].shape[1])
    model_kwargs["cache"].reorder_cache(order)
    inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=1, **model_kwargs)
    out = model(**inputs, return_dict=True)
    model_kwargs = model._update_model_kwargs_for_generation(out, model_kwargs)
    model_kwargs["cache"].crop(0)  # sliding-window layers recording their past: back to the window
    row, _ = capture.take()
    _read_step(samples, out.logits, row, blocked)
    return _Batch(ids, batch.start), model_kwargs


def _chosen_candidates(samples, order, new, cand_tokens):
    """Per new beam, which of its parent's candidates it continues with (N,) , or None if some beam of a prompt
    still searching took a token outside them. Rows of finished prompts take candidate 0 (never read)."""
    searching = torch.zeros_like(new, dtype=torch.bool)
    for s in samples:
        if s.beam_idx is not None and not s.done:
            searching[s.rows] = True
    match = cand_tokens[order] == new[:, None]  # (rows, N): candidates are distinct, so at most one True
    if not bool((match.any(dim=1) | ~searching).all()):
        return None
    return match.long().argmax(dim=1)


def _keep_chosen(model, model_kwargs, order, chosen, n):
    """Cache rows reordered to the chosen beams, each keeping its chosen candidate's column of the n fed."""
    rows = torch.arange(order.shape[0], device=order.device)
    for layer in model_kwargs["cache"].layers:
        if not layer.is_initialized:  # layers that share another layer's cache
            continue
        for name in ("keys", "values"):
            states = getattr(layer, name).index_select(0, order)  # (rows, heads, L + n, dim): one copy
            length = states.shape[2] - n
            states[:, :, length] = states[rows, :, length + chosen]  # the chosen column first among the n
            setattr(layer, name, states[:, :, : length + 1])  # a view: the next step's update copies it anyway
    keep_text_tokens(model, 1)
    return model._update_model_kwargs_for_generation({}, model_kwargs)


def _read_step(samples, logits, row, blocked):
    """Each prompt still searching takes its rows' next-token logits (the `blocked` ids at -inf) and, if it took a
    step, their attention row."""
    for s in samples:
        if s.done:
            continue
        s.logits = logits[s.rows, -1, :].float()
        s.logits[:, blocked] = -float("inf")
        if s.beam_idx is not None and row is not None:
            s.add_row(row[s.rows, -1])


def _reprefill(model, capture, samples, batch, generation_config, model_kwargs, fresh, fill, blocked):
    """Run the prefill again on every prompt's current sequence: after a rollback the prompts differ in length.

    Each row is left-padded anew; its mask, position and token-type columns are those it had (re-laid, so positions
    are unchanged), and the image features generate encoded are reused. A fresh cache, a fresh engine call (methods
    build their per-call state again, on the same images).
    """
    model_kwargs = model._update_model_kwargs_for_generation({}, model_kwargs)  # a column for each row's new token
    device = batch.ids.device
    lengths = torch.empty_like(batch.start)
    for s in samples:
        lengths[s.rows] = s.cur_len
    width = int(lengths.max())
    start = width - lengths
    ids = torch.full((lengths.shape[0], width), fill, dtype=torch.long, device=device)
    for s in samples:
        ids[s.rows, width - s.cur_len:] = s.state["running"][0, :, : s.cur_len]
    kwargs, cache = fresh
    kwargs = dict(kwargs, cache=copy.deepcopy(cache), **_relaid(model_kwargs, batch.start, start, width))
    capture.prefill_row = True
    try:
        with replaying(model):
            out = model._prefill(ids, generation_config, kwargs)
    finally:
        capture.prefill_row = False
    kwargs = model._update_model_kwargs_for_generation(out, kwargs)
    _record_past(kwargs["cache"])
    row, _ = capture.take()
    _read_step(samples, out.logits, row, blocked)
    return _Batch(ids, start), kwargs


def _prompt_cache(model, cache, beams):
    """One row per prompt of the cache after the prefill (every beam of a prompt holds the same), kept for
    `_refeed`; None where a refeed would not be exact (attention methods applied, non-plain cache layers)."""
    if not _rows_only(model) or not _keepable(cache):
        return None
    kept = copy.deepcopy(cache)
    kept.batch_select_indices(torch.arange(0, kept.layers[0].keys.shape[0], beams, device=kept.layers[0].keys.device))
    return kept


def _can_refeed(samples, prompt, prompt_len):
    """A refeed needs the prompt's cache, every row at the same length (the first prefill's layout) and at least
    one response token to feed."""
    lengths = {s.cur_len for s in samples}
    return prompt is not None and len(lengths) == 1 and lengths.pop() > prompt_len


def _refeed(model, capture, samples, batch, model_kwargs, prompt, blocked):
    """After a rollback, when every row has the same length: the prompt's cache copied per beam plus one forward
    over the responses (the prompt is not run again). Positions, masks and token types are the first prefill's
    columns, so each row sees what its own run sees."""
    length, prompt_len = samples[0].cur_len, prompt.layers[0].keys.shape[2]
    model_kwargs = model._update_model_kwargs_for_generation({}, model_kwargs)  # a column for each row's new token
    start = torch.zeros_like(batch.start)  # every row the same length: the first prefill's layout
    kwargs = dict(model_kwargs, cache=copy.deepcopy(prompt), **_relaid(model_kwargs, batch.start, start, length))
    kwargs["cache"].batch_repeat_interleave(samples[0].rows.stop - samples[0].rows.start)
    ids = torch.cat([s.state["running"][0, :, :length] for s in samples])
    truncate_call(model, prompt_len)
    inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=length - prompt_len, **kwargs)
    capture.every_row = True
    try:
        out = model(**inputs, return_dict=True)
    finally:
        capture.every_row = False
    kwargs = model._update_model_kwargs_for_generation(out, kwargs)
    row, _ = capture.take()
    _read_step(samples, out.logits, row, blocked)
    return _Batch(ids, start), kwargs


def _relaid(model_kwargs, old_start, start, width):
    """The per-token kwargs (mask, positions, token types) moved from rows starting at `old_start` to rows of
    `width` columns starting at `start`: each token keeps its values, new padding columns take the padding value."""
    device = old_start.device
    columns = torch.arange(width, device=device)[None, :]
    source = (old_start[:, None] + columns - start[:, None]).clamp_min(0)  # (rows, width): the old column
    real = columns >= start[:, None]
    out = {}
    for key, pad in PER_TOKEN_KEYS.items():
        value = model_kwargs.get(key)
        if torch.is_tensor(value):
            at = source.expand(*value.shape[:-2], -1, -1)
            out[key] = torch.where(real, value.gather(-1, at), torch.full((), pad, dtype=value.dtype, device=device))
    return out


def _opera_step(config, s, cand_logits, cand_tokens, rows, image_keys):
    """Penalty of one prompt's candidates: (log-probs with only the candidates allowed, rollback target or None)."""
    rows, image_keys = normalise_rows(rows[s.rows].float()), image_keys[s.rows]  # (beams, N, K + 1), (beams, K + 1)
    cand_logits, cand_tokens, logits = cand_logits[s.rows], cand_tokens[s.rows], s.logits
    masses = (rows * image_keys[:, None, :].float()).sum(dim=-1)  # (beams, N)
    hist = torch.nn.functional.pad(s.state["hist"], (0, 1))[:, None].expand(-1, rows.shape[1], -1, -1)
    window = torch.cat([hist, rows[:, :, None, rows.shape[-1] - s.r - 1:]], dim=2)  # (beams, N, R + 1, R + 1)
    penalty, location = candidate_penalty(window, masses, config)
    s.state["locs"] = torch.cat([s.state["locs"], beam_location(location)[:, None]], dim=1)
    penalised = cand_logits - config.penalty_weight * penalty
    if config.normalise_over == "candidates":
        log_probs = torch.full_like(logits, -float("inf")).scatter(1, cand_tokens, penalised)
        log_probs = torch.log_softmax(log_probs, dim=-1)
    else:
        log_probs = torch.log_softmax(logits.scatter(1, cand_tokens, penalised), dim=-1)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, cand_tokens, True)
        log_probs = log_probs.masked_fill(~keep, -float("inf"))
    return log_probs, rollback_target(s.state["locs"], s.counts, config)


def _candidate_rows(model, config, capture, samples, flat, model_kwargs, keep=False):
    """Every beam's top candidates and their last-layer rows (max over heads) over the prefix and themselves:
    (candidate logits (rows, N), tokens (rows, N), rows (rows, N, L + 1), image keys (rows, L + 1), next-token
    logits (rows, N, V) or None).

    All N candidates go in one forward when the family allows it (see `_one_forward_inputs`) and no attention
    method is applied: they sit at the same position, and a 4-D mask lets each see the prefix and itself only, so
    each row is the one a forward of that candidate alone gives. With an attention method applied the rows of such
    a many-row forward are not those of N one-token forwards (measured with VAR: up to 0.18 apart), so then, as
    with sliding-window layers, one forward per candidate, which stops after the last layer's attention and is
    cropped from the KV cache again. A single forward with `keep` (no prompt re-deciding a step) runs on to the
    logits and leaves its candidates in the cache: the chosen ones are the next step (`_main_forward`).
    """
    cand_logits, cand_tokens = torch.cat([s.logits for s in samples]).topk(config.num_attn_candidates, dim=-1)
    cache, n, length = model_kwargs["cache"], cand_tokens.shape[1], flat.shape[1]
    with lookahead(model):
        first = model.prepare_inputs_for_generation(torch.cat([flat, cand_tokens[:, :1]], dim=1),
                                                    next_sequence_length=1, **model_kwargs)
        alone = _rows_only(model)  # attention methods: see below
        together = _one_forward_inputs(model, first, cand_tokens, length) if n > 1 and alone else None
    if keep and alone and (together is not None or n == 1) and _keepable(cache):
        inputs = together if together is not None else first
        if "logits_to_keep" in inputs:
            inputs = dict(inputs, logits_to_keep=n)
        rows, image_keys, logits = _full_rows_of(model, capture, inputs)
        return cand_logits, cand_tokens, _own_rows(rows, n, length), image_keys[:, : length + 1], logits
    if together is not None:
        rows, image_keys = _rows_of(model, capture, cache, together, n)  # (rows, N, L + N)
        return cand_logits, cand_tokens, _own_rows(rows, n, length), image_keys[:, : length + 1], None
    out = []
    for i in range(n):
        inputs = first if i == 0 else model.prepare_inputs_for_generation(
            torch.cat([flat, cand_tokens[:, i : i + 1]], dim=1), next_sequence_length=1, **model_kwargs)
        row, image_keys = _rows_of(model, capture, cache, inputs, 1)
        out.append(row[:, 0])
    return cand_logits, cand_tokens, torch.stack(out, dim=1), image_keys, None


def _own_rows(rows, n, length):
    """(rows, N, L + N) rows of N candidates fed together -> (rows, N, L + 1): the prefix and each one itself."""
    own = rows[:, torch.arange(n), length + torch.arange(n)]  # each candidate's attention to itself
    return torch.cat([rows[:, :, :length], own[:, :, None]], dim=-1)


def _rows_only(model):
    """No attention method is applied: the engine runs OPERA's row capture alone."""
    return [type(m) for m in engine_of(model).methods] == [LastLayerRow]


def _keepable(cache):
    """Only plain dynamic layers let a candidate's column be kept (sliding and quantised layers do not)."""
    return all(type(layer).__name__ == "DynamicLayer" for layer in getattr(cache, "layers", [None]))


def _full_rows_of(model, capture, inputs):
    """Run a look-ahead forward to its logits; its fed tokens stay in the cache: (rows, image keys, logits)."""
    with lookahead(model):
        capture.every_row = True
        try:
            out = model(**inputs, return_dict=True)
        finally:
            capture.every_row = False
    rows, image_keys = capture.take()
    return rows, image_keys, out.logits.float()


def _rows_of(model, capture, cache, inputs, fed):
    """Run a look-ahead forward of `fed` tokens up to the last layer's attention; crop them from the cache."""
    with lookahead(model):
        capture.stop = True
        try:
            with contextlib.suppress(_RowTaken):  # raised once the last layer's row is read: the rest is not needed
                model(**inputs, return_dict=True)
        finally:
            capture.stop = False
        cache.crop(-fed)  # drop the candidates again
    return capture.take()


def _one_forward_inputs(model, first, cand_tokens, length):
    """The inputs of one forward feeding every candidate, or None where that would not be exact.

    Needs the position ids generate prepares (repeated: every candidate takes the next position) and full
    attention in every layer (a sliding-window layer's cache returns fewer keys than the 4-D mask would cover).
    """
    text = model.config.get_text_config()
    kinds = set(getattr(text, "layer_types", None) or [])
    if first.get("position_ids") is None or getattr(text, "sliding_window", None) or kinds - {"full_attention"}:
        return None
    if first.get("attention_mask") is not None and first["attention_mask"].dim() != 2:
        return None
    beams, n = cand_tokens.shape
    inputs = dict(first, input_ids=cand_tokens)
    for key, value in first.items():  # per-token extras (token types): the fed token's, for each candidate
        if key not in ("input_ids", "attention_mask") and torch.is_tensor(value) and value.dim() >= 2 \
                and value.shape[-1] == 1:
            inputs[key] = value.expand(*value.shape[:-1], n)
    past = first.get("attention_mask")
    past = (torch.ones(beams, length, dtype=torch.bool, device=cand_tokens.device) if past is None
            else past[:, :length].bool())
    own = torch.eye(n, dtype=torch.bool, device=cand_tokens.device).expand(beams, n, n)
    inputs["attention_mask"] = torch.cat([past[:, None, :].expand(beams, n, length), own], dim=-1)[:, None]
    return inputs


def _outputs(generation_config, samples, prompt_len, model_kwargs):
    """transformers' beam-search output for the batch: the best `num_return_sequences` of each prompt."""
    from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

    n = generation_config.num_return_sequences
    sequences = torch.cat([s.state["sequences"][0, :n] for s in samples])
    scores = torch.cat([s.state["scores"][0, :n] for s in samples])
    indices = torch.cat([s.state["indices"][0, :n] for s in samples])
    generated = int((indices + 1).bool().sum(dim=1).max())
    sequences = sequences[:, : prompt_len + generated]
    if not generation_config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=scores if generation_config.output_scores else None,
        beam_indices=indices[:, :generated], cache=model_kwargs.get("cache"))
