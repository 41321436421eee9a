"""Config class -> method class registry (peft-style): `apply` builds the method that a config names."""

from __future__ import annotations

from typing import Any, Callable

_METHODS: dict[type, type] = {}


def register_method(config_cls: type) -> Callable[[type], type]:
    """Class decorator: `config_cls` instances are run by the decorated method class."""

    def deco(method_cls: type) -> type:
        _METHODS[config_cls] = method_cls
        return method_cls

    return deco


def build_method(config: Any) -> Any:
    """The engine method for a config object, or a TypeError naming the accepted configs."""
    from . import _load_all  # noqa: F401

    for config_cls, method_cls in _METHODS.items():
        if isinstance(config, config_cls):
            return method_cls(config)
    names = ", ".join(sorted(c.__name__ for c in _METHODS))
    raise TypeError(f"{type(config).__name__} is not an attention-method config; expected one of: {names}")


def config_classes() -> dict[str, type]:
    """Method name (the config's `name`) -> config class, for the CLI."""
    from . import _load_all  # noqa: F401

    fields = {cls: getattr(cls, "__dataclass_fields__", {}).get("name") for cls in _METHODS}
    return {f.default: cls for cls, f in fields.items() if f is not None}
