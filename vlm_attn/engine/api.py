"""The engine's public verbs for code that runs its own forward passes (calibration, anchor capture, guidance).

Passes use these instead of reaching into an engine: find the engine `vlm_attn.apply` installed on a model, run
a forward unsteered, or run a forward with one extra observe-only method (a capture) next to, or instead of, the
applied ones. The engine imports no method, pass or family; the caller hands in the family adapter.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import torch

from .engine import MODEL_ATTR, Engine

if TYPE_CHECKING:
    from torch import nn

    from ..patches.base import FamilyAdapter
    from .method import AttentionMethod


def engine_of(model: "nn.Module") -> Engine | None:
    """The engine installed on `model` (by `vlm_attn.apply` or a running capture), or None when there is none."""
    engine = getattr(model, MODEL_ATTR, None)
    return engine if isinstance(engine, Engine) else None


@contextlib.contextmanager
def unsteered(model: "nn.Module") -> Iterator[None]:
    """Forwards inside run as if nothing were applied: plain attention, and the current call's state untouched.

    PAI's image-free guidance pass runs between two steered decode steps this way (SPEC §3). Without an engine
    on `model` this does nothing.
    """
    engine = engine_of(model)
    with engine.pause() if engine is not None else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def capturing(
    model: "nn.Module", method: "AttentionMethod", adapter: "FamilyAdapter", *, steered: bool = True
) -> Iterator[Engine]:
    """Forwards inside also run `method` (an observe-only capture); yields the engine that runs it.

    With methods applied to `model`, `method` runs after them (`steered=True`: it sees their edits) or alone
    (`steered=False`: the unsteered rows, bitwise the plain attention). With nothing applied, a temporary engine
    carrying `method` alone is installed with `adapter` and removed on exit. Read `engine.call` (the latest
    forward's state) and `engine.layers` (decoder layers, e.g. to stop a forward early) from the yielded engine.
    """
    engine = engine_of(model)
    if engine is None:
        engine = Engine(model, adapter, [method])
        engine.install()
        try:
            yield engine
        finally:
            engine.remove()
        return
    method.bind(model, engine.adapter, engine.num_layers)
    saved = engine.methods
    engine.methods = [*saved, method] if steered else [method]
    try:
        yield engine
    finally:
        engine.methods = saved
        method.unbind()


@contextlib.contextmanager
def lookahead(model: "nn.Module") -> Iterator[None]:
    """Forwards inside are tentative: the engine's per-call position state is restored on exit.

    OPERA feeds candidate tokens to look at their attention and then crops them from the KV cache; the engine must
    forget them too, or its image-position bookkeeping would run ahead of the cache. Without an engine this does
    nothing.
    """
    engine = engine_of(model)
    call = engine.call if engine is not None else None
    saved = None if call is None else (call.image_mask, call.prefill, dict(call._cache))
    try:
        yield
    finally:
        if call is not None and saved is not None:
            call.image_mask, call.prefill = saved[0], saved[1]
            call._cache.clear()
            call._cache.update(saved[2])
            engine.call = call


def keep_text_tokens(model: "nn.Module", tokens: int = 1) -> None:
    """Record that `tokens` text tokens per row, fed by a `lookahead` forward, stay in the KV cache after all.

    OPERA keeps the chosen candidate's keys and values from its look-ahead instead of feeding that token again;
    the engine's per-call positions must grow by what the cache kept. Without an engine or a call this does nothing.
    """
    engine = engine_of(model)
    call = engine.call if engine is not None else None
    if call is not None:
        mask = call.image_mask
        call.extend(torch.zeros(mask.shape[0], tokens, dtype=torch.bool, device=mask.device))


def truncate_call(model: "nn.Module", length: int) -> None:
    """Forget the tokens past the first `length` of the current call: the KV cache was cut back to them.

    OPERA rebuilds its cache after a rollback from a copy of the prompt's cache and feeds the kept response again;
    the engine's per-call positions must start from the prompt too. Without an engine or a call this does nothing.
    """
    engine = engine_of(model)
    call = engine.call if engine is not None else None
    if call is not None:
        call.image_mask = call.image_mask[:, :length]
        call._cache.clear()


@contextlib.contextmanager
def replaying(model: "nn.Module") -> Iterator[None]:
    """A prefill inside re-runs the last call's prompts on the same images (their features not encoded again).

    OPERA re-runs its batch's prefill after a rollback. The engine starts a new call as for any prefill, marked
    `CallState.replay`, so a method whose per-call state comes from the vision forward (PAINT's selection) takes
    the one it had. Without an engine this does nothing.
    """
    engine = engine_of(model)
    if engine is None:
        yield
        return
    previous, engine.replaying = engine.replaying, True
    try:
        yield
    finally:
        engine.replaying = previous
