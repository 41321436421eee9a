"""Shared plumbing of the same-forward decoding methods (DoLa, VISTA, ONLY): read hidden states, rewrite logits.

These methods need no second pass: they read hidden states the normal forward already computes (a decoder layer's
input or output, the final norm's input), turn them into extra next-token logits with the model's own LM head, and
combine those with the forward's logits. `ReadoutMethod` installs the hooks that do this on `bind` and removes them on
`unbind`:

* a forward pre-hook on the top model starts a step (it reads `logits_to_keep`, so only the positions whose logits
  the forward returns are kept: the last one inside `generate`);
* pre-hooks on the decoder layers whose *input* a method reads (`hidden_states[j]` in transformers' numbering:
  j = 0 is the embedding output, j = i the output of layer i - 1), and a pre-hook on the final norm for the last
  layer's output before the norm;
* optionally, extra rows for the model's own LM head call (`head_rows`): a pre-hook on the LM head appends them to
  its input and a forward hook splits them off its output, so the early-layer read-outs share the one pass over the
  head's weight that a decode step makes anyway (a decode step is bound by reading weights, not by the rows);
* a forward hook on the top model that hands the kept states and the forward's logits to `rewrite` and puts the
  result in `output.logits`, so an unchanged `model.generate` (greedy, sampling, any logits processor after it)
  decodes from the combined logits.

Nothing runs while the engine is paused (PAI's image-free guidance pass, VISTA's own steering-vector pass): those
forwards see the plain model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from ..engine import engine_of
from ..engine.method import AttentionMethod

__all__ = ["ReadoutMethod", "check_layer_range"]


def check_layer_range(name: str, layers: tuple[int, ...], limit: int, what: str) -> tuple[int, ...]:
    """`layers` unchanged when every index is below `limit`; otherwise a ValueError naming them and the range."""
    bad = [i for i in layers if i >= limit]
    if bad:
        raise ValueError(f"{name} {bad} out of range for {what} (allowed 0..{limit - 1}): choose layers in range")
    return layers


class ReadoutMethod(AttentionMethod, ABC):
    """Base of the methods that rewrite the forward's logits from hidden states of the same forward.

    Subclasses say what they read (`layer_inputs()`: decoder-layer indices whose input to keep; `reads_final`:
    keep the final norm's input) and implement `rewrite(logits, states)`. `enabled` False (a zero strength)
    installs nothing, so the model stays bitwise unpatched.
    """

    reads_final: bool = False

    def __init__(self) -> None:
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._step: dict[Any, Tensor] | None = None  # the states kept in the forward now running
        self._keep: int | None = None  # how many trailing positions the forward returns logits for (None: all)
        self._head_positions: int | None = None  # positions the forward's LM head call reads

    # ---------------------------------------------------------------- what a subclass provides
    @property
    def enabled(self) -> bool:
        return True

    def layer_inputs(self) -> tuple[int, ...]:
        """Decoder layers whose input hidden state (`hidden_states[j]`) `rewrite` reads."""
        return ()

    def head_rows(self, head_input: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        """Extra (B, E, D) rows to read out with the forward's own LM head call (its input `head_input` (B, N, D) is
        the final norm's output at the returned positions); their logits reach `rewrite` as ``states["head"]``."""
        return None

    @abstractmethod
    def rewrite(self, logits: Tensor, states: dict[Any, Tensor]) -> Tensor | None:
        """New logits (B, N, V) from the forward's (B, N, V) and the kept states (each (B, N, D)); None: keep."""

    # ---------------------------------------------------------------- bind / unbind
    def bind(self, model: nn.Module, adapter: Any, num_layers: int) -> None:
        self.model = model
        self.adapter = adapter
        self.num_layers = num_layers
        self.head = adapter.output_head()
        self.norm = adapter.final_norm()
        self.resolve(num_layers)
        if not self.enabled:
            return
        layers = adapter.decoder_layers()
        self._hooks.append(model.register_forward_pre_hook(self._begin, with_kwargs=True))
        for idx in self.layer_inputs():
            self._hooks.append(layers[idx].register_forward_pre_hook(self._keeper(("in", idx)), with_kwargs=True))
        if self.reads_final:
            self._hooks.append(self.norm.register_forward_pre_hook(self._keeper("final"), with_kwargs=True))
        if type(self).head_rows is not ReadoutMethod.head_rows:
            self._hooks.append(self.head.register_forward_pre_hook(self._head_in))
            # prepend: with several methods appending rows, the last one to append is the first to split its rows off
            self._hooks.append(self.head.register_forward_hook(self._head_out, prepend=True))
        self._hooks.append(model.register_forward_hook(self._end, with_kwargs=True))

    def resolve(self, num_layers: int) -> None:
        """Resolve model-dependent settings (layer ranges) and check them; ValueError when they cannot apply."""

    def unbind(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._step = None

    # ---------------------------------------------------------------- hooks
    def call(self) -> Any:
        """The engine's state of the call now running (for reports), or None."""
        engine = engine_of(self.model)
        return None if engine is None else engine.call

    def paused(self) -> bool:
        engine = engine_of(self.model)
        return engine is not None and engine.paused

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.paused():
            return
        keep = kwargs.get("logits_to_keep", 0)
        self._keep = keep if isinstance(keep, int) and keep > 0 else None
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        # rows of the LM head's own input (other methods may append theirs after them)
        self._head_positions = None if tokens is None else (
            tokens.shape[1] if self._keep is None else min(self._keep, tokens.shape[1]))
        self._step = {}

    def _keeper(self, key: Any):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if self._step is None or self.paused():
                return
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is None or key in self._step:  # the forward's own call comes first (a read-out may reuse norm)
                return
            self._step[key] = hidden if self._keep is None else hidden[:, -self._keep :]

        return hook

    def _head_in(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._step is None or "head_rows" in self._step or not args or self.paused():
            return None
        x = args[0]
        with torch.no_grad():
            extra = self.head_rows(x[:, : self._head_positions], self._step)
        if extra is None:
            return None
        self._step["head_rows"] = (x.shape[1], extra.shape[1])
        return (torch.cat([x, extra.to(x.dtype)], dim=1), *args[1:])

    def _head_out(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if self._step is None or "head_rows" not in self._step or "head" in self._step:
            return None
        start, count = self._step["head_rows"]
        self._step["head"] = output[:, start : start + count].float()
        return output[:, :start]

    def _end(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self._step is None or self.paused():
            return None
        states, self._step = self._step, None
        logits = getattr(output, "logits", None)
        if logits is None:
            return None
        n = logits.shape[1]
        states = {k: v[:, -n:] if k == "final" or (isinstance(k, tuple) and k[0] == "in") else v
                  for k, v in states.items()}
        new = self.rewrite(logits, states)
        if new is None:
            return None
        output.logits = new.to(logits.dtype)
        return output

    # ---------------------------------------------------------------- read-out
    def read_out(self, hidden: Tensor, normed: bool) -> Tensor:
        """Vocabulary logits (float32) of hidden states through the LM head, after the final norm when `normed`."""
        with torch.no_grad():
            return self.head(self.norm(hidden) if normed else hidden).float()
