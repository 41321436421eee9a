"""OPERA's beam search as a transformers 5.x `custom_generate` callable (rules: `vlm_attn.methods.opera`).

    out = model.generate(**inputs, num_beams=5, max_new_tokens=64, custom_generate=opera_decoding,
                         opera=OPERAConfig())

`model.generate` prepares everything as for its own beam search (inputs expanded per beam, cache, logits
processors, stopping criteria) and hands the loop to `opera_decoding`. The loop uses transformers' own beam-search
bookkeeping (`_get_top_k_continuations`, `_update_finished_beams`, ...), so with penalty 0, no rollback and the
"vocabulary" normaliser it is transformers' beam search, token for token and score for score.

Attention rows come from our attention function: an observe-only engine method asks for the one query row of the
last decoder layer at decode steps and keeps its max over heads; every other layer and head stays plain SDPA. The
candidate look-ahead forwards run on the live KV cache, which is cropped back afterwards; a rollback re-feeds the
kept prefix on a copy of the prompt's cache (one forward over the response tokens).
"""

from __future__ import annotations

import contextlib

import copy
import logging
from typing import Any

import torch
from torch import nn

from ..engine import capturing, checkpoint_call, engine_of, lookahead, restore_call
from ..engine.method import AttentionMethod, LayerView, RowSet
from ..errors import UserError
from ..methods.opera import OPERAConfig, beam_location, candidate_penalty, normalise_rows, rollback_target
from ..patches.base import get_adapter

logger = logging.getLogger(__name__)


class _RowTaken(Exception):
    """Ends a look-ahead forward once the last layer's row is read (its MLP, norm and LM head are not needed)."""


class LastLayerRow(AttentionMethod):
    """Observe-only: at decode steps, the last layer's attention rows of the fed tokens, max over heads."""

    name = "opera_rows"

    def __init__(self) -> None:
        self.layer = -1
        self.latest: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows (B, Q, K), image keys (B, K))
        self.stop = False  # look-ahead forwards: rows of every fed token, then raise _RowTaken

    def bind(self, model: nn.Module, adapter: Any, num_layers: int) -> None:
        self.layer = num_layers - 1

    def rows(self, view: LayerView) -> torch.Tensor | None:
        if view.layer_idx != self.layer or view.prefill or (view.query_image.shape[1] != 1 and not self.stop):
            return None
        return torch.ones_like(view.query_image)

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> None:
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

    Returns what transformers' beam search returns (sequences, or a `GenerateBeamDecoderOnlyOutput` with
    `sequences_scores` when `return_dict_in_generate=True, output_scores=True`).
    """
    config = opera if opera is not None else OPERAConfig(num_beams=generation_config.num_beams)
    check_settings(config, generation_config, input_ids.shape[0], model_kwargs)
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
    if rows != beams:
        raise UserError(f"OPERA decodes one prompt per generate call (each prompt has its own rollback history), got "
                        f"{rows // beams} prompts: call generate once per prompt")
    if not model_kwargs.get("use_cache", True):
        raise UserError("OPERA needs the KV cache (its look-ahead forwards are cropped from it): pass use_cache=True")
    if generation_config.num_return_sequences > beams:
        raise UserError("num_return_sequences must be <= num_beams")


def _search(model, input_ids, logits_processor, stopping_criteria, generation_config, config, capture, model_kwargs):
    beams, prompt_len = input_ids.shape
    device = input_ids.device
    eos = generation_config._eos_token_tensor
    pad = generation_config._pad_token_tensor
    max_length = generation_config.max_length
    early_stopping, length_penalty = generation_config.early_stopping, generation_config.length_penalty
    beams_to_keep = max(2, 1 + (eos.shape[0] if eos is not None else 0)) * beams
    top_mask = torch.arange(beams_to_keep, device=device) < beams
    fill = pad if pad is not None else (eos[0] if eos is not None else -1)

    running = torch.full((1, beams, max_length), int(fill), dtype=torch.long, device=device)
    running[0, :, :prompt_len] = input_ids
    state = {
        "running": running,
        "running_scores": torch.cat([torch.zeros(1, 1), torch.full((1, beams - 1), -1e9)], 1).to(device),
        "running_indices": torch.full((1, beams, max_length - prompt_len), -1, dtype=torch.int32, device=device),
        "sequences": running.clone(),
        "scores": torch.full((1, beams), -1e9, device=device),
        "finished": torch.zeros(1, beams, dtype=torch.bool, device=device),
        "can_improve": torch.ones(1, 1, dtype=torch.bool, device=device),
        "hist": torch.zeros(beams, 0, 0, device=device),  # response rows over response columns (normalised)
        "locs": torch.zeros(beams, 0, dtype=torch.long, device=device),  # per-beam location per step
    }
    state["indices"] = state["running_indices"].clone()
    hits = torch.zeros(1, beams, dtype=torch.bool, device=device)

    out = model._prefill(input_ids, generation_config, model_kwargs)
    model_kwargs = model._update_model_kwargs_for_generation(out, model_kwargs)
    logits = out.logits[:, -1, :].float()
    del out
    _record_past(model_kwargs["cache"])
    prompt = (_first_row_copy(model_kwargs["cache"], beams, device), dict(model_kwargs), checkpoint_call(model),
              logits.clone())

    cur_len, snapshots, counts, rejected = prompt_len, {}, {}, {}
    redo: int | None = None  # response index being re-decided after a rollback
    while True:
        r = cur_len - prompt_len
        snapshots[r] = {k: v.clone() for k, v in state.items()}
        snapshots.pop(r - config.window_size, None)
        flat = state["running"][0, :, :cur_len]
        if redo == r:
            log_probs = torch.log_softmax(logits, dim=-1)
            log_probs.view(-1)[rejected[r]] = -float("inf")
            redo = None
        else:
            log_probs, target = _opera_step(model, config, capture, logits, flat, model_kwargs, state, r, counts)
            if target is not None and target < r and target in snapshots:
                counts[target] = counts.get(target, 0) + 1
                chosen = snapshots[target + 1]
                pairs = (chosen["running_indices"][0, :, target].long() * logits.shape[-1]
                         + chosen["running"][0, :, prompt_len + target])
                rejected[target] = torch.cat([rejected.get(target, pairs[:0]), pairs]).unique()
                state = {k: v.clone() for k, v in snapshots[target].items()}
                for k in [k for k in snapshots if k > target]:
                    del snapshots[k]
                cur_len = prompt_len + target
                logits, model_kwargs = _refeed(model, prompt, state["running"][0, :, :cur_len], prompt_len)
                redo = target
                logger.debug("OPERA: rollback to response index %d (time %d)", target, counts[target])
                continue
        log_probs = logits_processor(flat, log_probs)
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
            next_token_hits_stopping_criteria=hits, top_num_beam_mask=top_mask, num_beams=beams, cur_len=cur_len,
            decoder_prompt_len=prompt_len, length_penalty=length_penalty, early_stopping=early_stopping)
        beam_idx = state["running_indices"][0, :, r].long()
        model_kwargs["cache"].reorder_cache(beam_idx)
        state["hist"] = state["hist"][beam_idx]
        cur_len += 1
        state["can_improve"] = model._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=state["can_improve"], running_beam_scores=state["running_scores"],
            beam_scores=state["scores"], is_sent_finished=state["finished"], cur_len=cur_len, max_length=max_length,
            decoder_prompt_len=prompt_len, early_stopping=early_stopping, length_penalty=length_penalty)
        if not bool(model._beam_search_has_unfinished_sequences(state["can_improve"], state["finished"], hits,
                                                                early_stopping)):
            break
        logits, model_kwargs = _main_forward(model, capture, state, cur_len, prompt_len, model_kwargs)
    return _outputs(generation_config, state, prompt_len, model_kwargs)


def _first_row_copy(cache: Any, beams: int, device: torch.device) -> Any:
    """A copy of the prompt's cache holding one row: every beam holds the same prompt. Each per-row tensor is
    copied as its first row only, so no full copy is ever made (`_refeed` expands it per beam again)."""
    memo: dict[int, Any] = {}
    for layer in getattr(cache, "layers", []):
        for value in vars(layer).values():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == beams:
                memo[id(value)] = value[:1].clone()
    kept = copy.deepcopy(cache, memo)
    kept.reorder_cache(torch.zeros(1, dtype=torch.long, device=device))  # whatever was not a per-row attribute
    return kept


def _record_past(cache: Any) -> None:
    """Let sliding-window layers keep the states look-ahead tokens push out, so `crop` can restore them."""
    if not hasattr(cache, "crop") or not hasattr(cache, "reorder_cache"):
        raise UserError(f"OPERA needs a cache that can be cropped and reordered, got {type(cache).__name__}: use the "
                        "default dynamic cache (no cache_implementation)")
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()


def _main_forward(model, capture, state, cur_len, prompt_len, model_kwargs):
    """Feed each beam's newest token; append its attention row (response columns) to the beam's history."""
    flat = state["running"][0, :, :cur_len]
    inputs = model.prepare_inputs_for_generation(flat, next_sequence_length=1, **model_kwargs)
    out = model(**inputs, return_dict=True)
    model_kwargs = model._update_model_kwargs_for_generation(out, model_kwargs)
    model_kwargs["cache"].crop(0)  # sliding-window layers recording their past: back to the window
    row, _ = capture.take()
    resp = normalise_rows(row[:, -1].float())[:, prompt_len:cur_len]  # (beams, R)
    hist = state["hist"]
    hist = torch.nn.functional.pad(hist, (0, 1))  # one more column for the new token
    state["hist"] = torch.cat([hist, resp[:, None, :]], dim=1)
    return out.logits[:, -1, :].float(), model_kwargs


def _opera_step(model, config, capture, logits, flat, model_kwargs, state, r, counts):
    """Candidate look-ahead and penalty: (log-probs with only the candidates allowed, rollback target or None)."""
    beams, vocab = logits.shape
    prompt_len = flat.shape[1] - r
    cand_logits, cand_tokens = logits.topk(config.num_attn_candidates, dim=-1)
    rows, image_keys = _candidate_rows(model, capture, flat, cand_tokens, model_kwargs)
    rows = normalise_rows(rows.float())  # (beams, N, cur_len + 1)
    masses = (rows * image_keys[:, None, :].float()).sum(dim=-1)  # (beams, N)
    hist = torch.nn.functional.pad(state["hist"], (0, 1))[:, None].expand(-1, rows.shape[1], -1, -1)
    window = torch.cat([hist, rows[:, :, None, prompt_len:]], dim=2)  # (beams, N, R + 1, R + 1)
    penalty, location = candidate_penalty(window, masses, config)
    state["locs"] = torch.cat([state["locs"], beam_location(location)[:, None]], dim=1)
    penalised = cand_logits - config.penalty_weight * penalty
    if config.normalise_over == "candidates":
        log_probs = torch.full_like(logits, -float("inf")).scatter(1, cand_tokens, penalised)
        log_probs = torch.log_softmax(log_probs, dim=-1)
    else:
        log_probs = torch.log_softmax(logits.scatter(1, cand_tokens, penalised), dim=-1)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, cand_tokens, True)
        log_probs = log_probs.masked_fill(~keep, -float("inf"))
    return log_probs, rollback_target(state["locs"], counts, config)


def _candidate_rows(model, capture, flat, cand_tokens, model_kwargs):
    """Each candidate's last-layer row (max over heads) over the prefix and itself: (beams, N, L + 1), image keys.

    All N candidates go in one forward when the family allows it (see `_one_forward_inputs`) and no attention
    method is applied: they sit at the same position, and a 4-D mask lets each see the prefix and itself only, so
    each row is the one a forward of that candidate alone gives. With an attention method applied the rows of such
    a many-row forward are not those of N one-token forwards (measured with VAR: up to 0.18 apart), so then, as
    with sliding-window layers, one forward per candidate. Every forward stops after the last layer's attention,
    and the candidates are cropped from the KV cache again.
    """
    cache, n, length = model_kwargs["cache"], cand_tokens.shape[1], flat.shape[1]
    with lookahead(model):
        first = model.prepare_inputs_for_generation(torch.cat([flat, cand_tokens[:, :1]], dim=1),
                                                    next_sequence_length=1, **model_kwargs)
        alone = [type(m) for m in engine_of(model).methods] == [LastLayerRow]  # attention methods: see below
        together = _one_forward_inputs(model, first, cand_tokens, length) if n > 1 and alone else None
    if together is not None:
        rows, image_keys = _rows_of(model, capture, cache, together, n)  # (beams, N, L + N)
        own = rows[:, torch.arange(n), length + torch.arange(n)]  # each candidate's attention to itself
        return torch.cat([rows[:, :, :length], own[:, :, None]], dim=-1), image_keys[:, : length + 1]
    out = []
    for i in range(n):
        inputs = first if i == 0 else model.prepare_inputs_for_generation(
            torch.cat([flat, cand_tokens[:, i : i + 1]], dim=1), next_sequence_length=1, **model_kwargs)
        row, image_keys = _rows_of(model, capture, cache, inputs, 1)
        out.append(row[:, 0])
    return torch.stack(out, dim=1), image_keys


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


def _refeed(model, prompt, prefix, prompt_len):
    """Rebuild the cache for `prefix` (beams, L): a copy of the prompt's cache plus one forward over the response."""
    cache, kwargs, call, logits = prompt
    kwargs = dict(kwargs, cache=copy.deepcopy(cache))
    kwargs["cache"].reorder_cache(torch.zeros(prefix.shape[0], dtype=torch.long, device=prefix.device))  # per beam
    restore_call(model, call)
    new = prefix.shape[1] - prompt_len
    if new == 0:
        return logits.clone(), kwargs
    if new > 1:
        kwargs = model._update_model_kwargs_for_generation({}, kwargs, num_new_tokens=new - 1)
    inputs = model.prepare_inputs_for_generation(prefix, next_sequence_length=new, **kwargs)
    out = model(**inputs, return_dict=True)
    kwargs = model._update_model_kwargs_for_generation(out, kwargs)
    kwargs["cache"].crop(0)
    return out.logits[:, -1, :].float(), kwargs


def _outputs(generation_config, state, prompt_len, model_kwargs):
    from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

    n = generation_config.num_return_sequences
    sequences, scores, indices = state["sequences"][0, :n], state["scores"][0, :n], state["indices"][0, :n]
    generated = int((indices + 1).bool().sum(dim=1).max())
    sequences = sequences[:, : prompt_len + generated]
    if not generation_config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=scores if generation_config.output_scores else None,
        beam_indices=indices[:, :generated], cache=model_kwargs.get("cache"))
