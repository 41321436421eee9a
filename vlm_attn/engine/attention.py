"""Our attention function: SDPA for every head, explicit recomputation only where a method edits.

It is registered in transformers' `AttentionInterface` (with a matching mask function, SPEC §1.2) and reached
through `config._attn_implementation` of the language model only. The per-model engine is found on the attention
module itself (`module._vlm_attn_engine`), so two patched models never share state. `steered_attention` reads top to
bottom; each special case is one helper below it, in the order it runs.
"""

from __future__ import annotations

import functools
import operator
import sys
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .method import AttentionMethod, LayerView, RowSet

ENGINE_ATTR = "_vlm_attn_engine"
SDPA_NAME = "vlm_attn"
EAGER_NAME = "vlm_attn_eager"
NEG = torch.finfo(torch.float32).min  # masked-out score (eager attention's convention)

Asked = list[tuple[AttentionMethod, torch.Tensor]]  # (method, its (B, Q) bool rows) for the methods that edit here


def steered_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, *,
    base: Callable[..., tuple[torch.Tensor, Any]], base_returns_weights: bool = True, **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Run `base` for all heads; recompute and overwrite the (head, row) pairs that active methods edit.

    Scores are computed like eager attention (matmul in the model dtype, softmax in fp32). With no method asking
    for a row the base output is returned untouched (bitwise pass-through). Decode steps (one query row) take a
    path with no host synchronisation.
    """
    run_base = functools.partial(base, module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    view, asked = methods_asking(module, query.shape[2], key.shape[2])
    if not asked:
        return run_base()
    view.value = value
    out, weights = (None, None) if skips_base(view, asked, base_returns_weights) else run_base()
    rows, per_method = row_sets(view, asked)
    scores = row_scores(query, key, rows, scaling if scaling is not None else module.scaling, kwargs.get("softcap"))
    mask = row_mask(attention_mask, rows, view)
    view.masked = mask is not None
    if mask is not None:
        scores = scores + mask
    probs, changed = run_edits(view, per_method, scores)
    if changed is None:  # the methods only looked (capture passes)
        return (out, weights) if out is not None else run_base()
    new = grouped_matmul(probs.to(value.dtype), value).to(query.dtype).transpose(1, 2)  # (B, R, H, D)
    return write_back(out, weights, new, changed, rows)


def methods_asking(module: torch.nn.Module, q_len: int, kv_len: int) -> tuple[LayerView | None, Asked]:
    """This layer's view and the methods that edit rows here; none when the model is not steered right now."""
    engine = getattr(module, ENGINE_ATTR, None)
    if engine is None or engine.call is None or not engine.methods or engine.paused:
        return None, []
    view = LayerView(module.layer_idx, engine.call, engine.call.view_parts(q_len, kv_len))
    asked = [(m, r) for m in engine.methods if (r := m.rows(view)) is not None]
    if q_len > 1:  # prefill: drop empty requests (one host sync each); decode requests are taken as they are
        asked = [(m, r) for m, r in asked if bool(r.any())]
    return view, asked


def skips_base(view: LayerView, asked: Asked, base_returns_weights: bool) -> bool:
    """Decode fast path: when the one row is recomputed in every sample, the explicit path yields every head
    (edited or not, eager-equal), so an SDPA call would only be overwritten and is not run."""
    one_row = view.query_image.shape[1] == 1
    return one_row and not base_returns_weights and any(m.decode_rows_cover_all(view) for m, _ in asked)


def row_sets(view: LayerView, asked: Asked) -> tuple[RowSet, list[tuple[AttentionMethod, RowSet]]]:
    """The union of the asked rows, padded per sample to a common count R, and each method's own part of it."""
    wanted = functools.reduce(operator.or_, [r for _, r in asked])
    if wanted.shape[1] == 1:  # decode step: the one row, no sort and no host sync
        rows = RowSet(index=view.shared("decode_index", lambda: torch.zeros_like(wanted, dtype=torch.long)),
                      valid=wanted, own=wanted)
    else:
        counts = wanted.sum(dim=1)
        r = int(counts.max())
        # Stable sort puts wanted rows first, in order; padding repeats them (never written back).
        order = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :r]
        valid = torch.arange(r, device=wanted.device)[None, :] < counts[:, None]
        rows = RowSet(index=torch.where(valid, order, order[:, :1]), valid=valid, own=valid)
    if len(asked) == 1:  # one method: its rows are the gathered rows
        return rows, [(asked[0][0], rows)]
    decode = wanted.shape[1] == 1
    return rows, [(m, RowSet(rows.index, rows.valid, (r if decode else r.gather(1, rows.index)) & rows.valid))
                  for m, r in asked]


def row_scores(
    query: torch.Tensor, key: torch.Tensor, rows: RowSet, scale: float, softcap: float | None
) -> torch.Tensor:
    """Explicit recomputation: fp32 scores (B, H, R, K) of the gathered rows, as eager attention computes them."""
    if query.shape[2] > 1:
        query = query.gather(2, rows.index[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3]))
    scores = grouped_matmul(query, key.transpose(-1, -2)).float() * scale
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


def grouped_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GQA product: (B, H, R, X) @ (B, Hkv, X, Y) -> (B, H, R, Y) without repeating the shared KV heads.

    One `bmm` on 3-D views: the few-row decode case is dominated by per-op cost, not by the product itself.
    """
    batch, heads, rows, x = a.shape
    kv_heads = b.shape[1]
    out = torch.bmm(a.reshape(batch * kv_heads, (heads // kv_heads) * rows, x), b.reshape(batch * kv_heads, x, -1))
    return out.view(batch, heads, rows, b.shape[-1])


def row_mask(attention_mask: torch.Tensor | None, rows: RowSet, view: LayerView) -> torch.Tensor | None:
    """Additive fp32 mask (B, 1, R, K) of the gathered rows; None for a decode row with no mask (it sees every key).

    Mask rebuild: SDPA may have been given mask=None with is_causal, so causality is rebuilt from positions. At a
    decode step the layers of one forward share their mask tensor (one per layer type): each is converted once (the
    entry holds the mask, so its id cannot be reused while the entry lives).
    """
    if view.query_image.shape[1] > 1:
        return _additive(attention_mask, rows, view)
    if attention_mask is None:
        return None
    make = lambda: (attention_mask, _additive(attention_mask, rows, view))  # noqa: E731
    return view.shared(("decode_mask", id(attention_mask)), make)[1]


def _additive(attention_mask: torch.Tensor | None, rows: RowSet, view: LayerView) -> torch.Tensor:
    batch, kv_len = rows.index.shape[0], view.key_pos.shape[0]
    if attention_mask is None:  # causal: a row sees the keys at or before its own position
        allowed = (view.key_pos[None, None, :] <= view.query_pos[rows.index][:, :, None])[:, None]
    else:
        m = attention_mask[..., :kv_len].expand(batch, -1, -1, -1)
        if m.shape[2] > 1:
            m = m.gather(2, rows.index[:, None, :, None].expand(batch, m.shape[1], rows.index.shape[1], kv_len))
        if m.dtype != torch.bool:
            return m.float().clamp_min(NEG)
        allowed = m
    return torch.where(allowed, torch.zeros((), dtype=torch.float32, device=allowed.device), NEG)


def run_edits(
    view: LayerView, per_method: list[tuple[AttentionMethod, RowSet]], scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logit edits, softmax, probability edits (SPEC §6): the probabilities and the (B, H, R) cells changed."""
    changed: torch.Tensor | None = None
    for method, rs in per_method:
        if (res := method.edit_logits(view, rs, scores)) is not None:
            scores, changed = res[0], _union(changed, res[1], rs)
    probs = torch.softmax(scores, dim=-1)
    for method, rs in per_method:
        if (res := method.edit_probs(view, rs, probs)) is not None:
            probs, changed = res[0], _union(changed, res[1], rs)
    return probs, changed


def _union(a: torch.Tensor | None, b: torch.Tensor, rs: RowSet) -> torch.Tensor:
    """Add a method's changed cells, limited to its own rows (a lone method's own rows are the valid ones, which
    `write_back` limits to anyway)."""
    if rs.own is not rs.valid:
        b = b & rs.own[:, None, :]
    return b if a is None else a | b


def write_back(
    out: torch.Tensor | None, weights: Any, new: torch.Tensor, changed: torch.Tensor, rows: RowSet
) -> tuple[torch.Tensor, Any]:
    """Write the recomputed rows (B, R, H, D) over a copy of the base output in the (head, row) cells a method
    changed; with no base output (decode fast path) the recomputed row is the output."""
    if out is None:
        return new, None
    keep = (changed & rows.valid[:, None, :]).transpose(1, 2)[..., None]  # (B, R, H, 1): padding is never kept
    if out.shape[1] == 1:  # decode: the one row, kept where a method changed it in a sample that asked
        return torch.where(keep, new, out), weights
    index = rows.index[:, :, None, None].expand_as(new)
    merged = torch.where(keep, new, out.gather(1, index))
    # Padding repeats a sample's first gathered row: give it that row's value, so the duplicate writes agree.
    merged = torch.where(rows.valid[:, :, None, None], merged, merged[:, :1])
    return out.scatter(1, index, merged), weights


def _module_eager(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The modeling file's own `eager_attention_forward` (transformers keeps one per architecture)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward")


def _sdpa_steered(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return steered_attention(module, query, key, value, attention_mask, scaling, base=sdpa_attention_forward,
                             base_returns_weights=False, **kwargs)


def _eager_steered(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return steered_attention(module, query, key, value, attention_mask, scaling, base=_module_eager(module), **kwargs)


def register() -> None:
    """Register our two implementation names (SDPA- and eager-based), each with its mask function.

    Idempotent. The registry is transformers' own; our per-model state never lives in it.
    """
    AttentionInterface.register(SDPA_NAME, _sdpa_steered)
    AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
    AttentionInterface.register(EAGER_NAME, _eager_steered)
    AttentionMaskInterface.register(EAGER_NAME, eager_mask)
