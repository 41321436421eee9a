"""Method name -> (config class, method class): `apply` builds the method a config names, the CLI lists them.

Attention methods register with `register_method(ConfigClass)` on their engine plug; input-level methods (Visual
Funnel, ViCrop: they pick the images of the answer turn, nothing is attached to the model) register their config
with `register_input(ConfigClass)`, with no method class; decoding methods (OPERA: they replace the decoding loop)
with `register_decoding(ConfigClass)`. Names are unique (a second class under a taken name is
refused) and looked up case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

ATTENTION = "attention"
INPUT = "input"
DECODING = "decoding"


@dataclass(frozen=True)
class Entry:
    """One registered method: its name, config class, engine method class (None for input-level) and kind."""

    name: str
    config: type
    method: type | None
    kind: str


_REGISTRY: dict[str, Entry] = {}


def _name_of(config_cls: type) -> str:
    name = getattr(config_cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{config_cls.__name__} needs a class attribute `name` (its registry and CLI key)")
    return name.lower()


def _add(config_cls: type, method_cls: type | None, kind: str) -> None:
    name = _name_of(config_cls)
    old = _REGISTRY.get(name)
    if old is not None and old.config is not config_cls:
        raise ValueError(f"method name {name!r} is taken by {old.config.__qualname__}; "
                         f"{config_cls.__qualname__} needs another name")
    _REGISTRY[name] = Entry(name, config_cls, method_cls, kind)


def register_method(config_cls: type) -> Callable[[type], type]:
    """Class decorator on an engine method: `config_cls` instances are run by it (ValueError on a taken name)."""

    def deco(method_cls: type) -> type:
        _add(config_cls, method_cls, ATTENTION)
        return method_cls

    return deco


def register_input(config_cls: type) -> type:
    """Register an input-level method's config (no engine method); returns the class, so it can decorate it."""
    _add(config_cls, None, INPUT)
    return config_cls


def register_decoding(config_cls: type) -> type:
    """Register a decoding method's config (no engine method: it runs its own search loop); returns the class."""
    _add(config_cls, None, DECODING)
    return config_cls


def entries() -> dict[str, Entry]:
    """Every registered method by name, sorted by name."""
    from . import _load_all  # noqa: F401

    return dict(sorted(_REGISTRY.items()))


def lookup(name: str) -> Entry:
    """The entry of `name` (any case); KeyError listing every method otherwise."""
    found = entries().get(name.lower())
    if found is None:
        raise KeyError(f"unknown method {name!r}; choose from: {', '.join(entries())}")
    return found


def config_classes(kind: str | None = None) -> dict[str, type]:
    """Method name -> config class (every method, or those of one kind: "attention" / "input" / "decoding")."""
    return {n: e.config for n, e in entries().items() if kind is None or e.kind == kind}


def build_method(config: Any) -> Any:
    """The engine method for an attention-method config, or a TypeError naming what to do with it instead."""
    entry = next((e for e in entries().values() if isinstance(config, e.config)), None)
    if entry is None or entry.method is None:
        raise TypeError(_not_attention(config, entry))
    return entry.method(config)


def _not_attention(config: Any, entry: Entry | None) -> str:
    """Why `config` cannot be applied to a model: a decoding or input-level method, or no method at all."""
    kind = type(config).__name__
    if entry is not None and entry.kind == DECODING:
        return (f"{kind} is a decoding method: pass it to vlm_attn.generate(..., methods=[...]) or to "
                "model.generate(custom_generate=..., see the README), not to apply")
    if entry is not None:
        return f"{kind} is an input-level method: pass it to vlm_attn.generate(..., methods=[...]), not to apply"
    names = ", ".join(sorted(e.config.__name__ for e in entries().values() if e.method is not None))
    return f"{kind} is not an attention-method config; expected one of: {names}"


def config_list_of(configs: Any) -> list[Any]:
    """`apply`'s configs argument as a list: None -> [], one config -> [config], a list or tuple as given."""
    return [] if configs is None else list(configs) if isinstance(configs, (list, tuple)) else [configs]


def check_unique(configs: Iterable[Any]) -> None:
    """Refuse two configs of one method in one call (their edits would stack): ValueError naming the method."""
    from ..errors import UserError

    seen: set[str] = set()
    for config in configs:
        name = str(getattr(config, "name", type(config).__name__)).lower()
        if name in seen:
            raise UserError(f"method {name!r} given twice ({type(config).__name__}): each method runs once per "
                            "call; put its settings in one config")
        seen.add(name)
