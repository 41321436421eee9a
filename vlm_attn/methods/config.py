"""The one shape of every method's settings: a frozen, validated, JSON-serialisable dataclass.

    @dataclass(frozen=True)
    class MyConfig(MethodConfig):
        name: ClassVar[str] = "mine"
        description: ClassVar[str] = "one line for --help"
        strength: float = setting(0.5, "how hard to push", Number(0, 1))

Each field declares its help text and its constraint (`setting`); `validate()` (run on construction) checks every
field against its constraint and stores the normalised value (lists become tuples), so a bad value fails at once
with a `ConfigError` naming the class and the field: ``VARConfig.p must be a number in [0, 1], got '0.6' (str)``.
The command line reads the same metadata to declare ``--<method>-<field>`` flags with their help.

The `check_*` functions are the validation helpers every method module shares (also for arguments that are not
config fields); each takes the qualified name to put in its message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from ..errors import UserError

__all__ = [
    "Bool", "Choice", "ConfigError", "Constraint", "Custom", "Dims", "Layers", "MethodConfig", "Number", "Numbers",
    "Text", "check_bool", "check_choice", "check_layers", "check_nonneg", "check_number", "check_open_closed_unit",
    "check_ratio", "check_real", "setting",
]

C = TypeVar("C", bound="MethodConfig")


class ConfigError(UserError, TypeError):
    """A setting of the wrong type or out of range; the message names ``Class.field``, the rule and the value.

    A ValueError (through UserError) and a TypeError, so callers catching either keep working.
    """


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


# ------------------------------------------------------------------------------------------- check helpers
def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> float | int:
    """`value` as a float (int when `integer`), or ConfigError: a finite number (bool is not one) in the range."""
    kind = "an integer" if integer else "a number"
    rule = kind + _range_text(low, high, low_open, high_open)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ConfigError(f"{name} must be {rule}, {_got(value)}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ConfigError(f"{name} must be {rule}, {_got(value)}")
    return int(value) if integer else float(value)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {fmt(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {fmt(high)}"
    return ""


def check_real(name: str, value: Any) -> float:
    """A finite real number (not a bool)."""
    return float(check_number(name, value))


def check_nonneg(name: str, value: Any) -> float:
    """A finite real ``>= 0``."""
    return float(check_number(name, value, low=0.0))


def check_ratio(name: str, value: Any) -> float:
    """A finite real in ``[0, 1]``."""
    return float(check_number(name, value, 0.0, 1.0))


def check_open_closed_unit(name: str, value: Any) -> float:
    """A finite real in ``(0, 1]``."""
    return float(check_number(name, value, 0.0, 1.0, low_open=True))


def check_bool(name: str, value: Any) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a bool (true or false), {_got(value)}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of `choices`."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, {_got(value)}")
    return value


def check_layers(name: str, layers: Any) -> tuple[int, ...] | None:
    """None (the default layers), or a sorted tuple of distinct decoder-layer indices >= 0, not empty."""
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ConfigError(f"{name} must be a sequence of layer indices >= 0 or None, {_got(layers)}")
    out: list[int] = []
    for idx in layers:
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ConfigError(f"{name} must hold integer layer indices >= 0, got {idx!r} ({type(idx).__name__})")
        out.append(int(idx))
    if not out:
        raise ConfigError(f"{name} must not be empty; use None for the default layers 2..L-1")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} must not repeat a layer, got {tuple(layers)!r}")
    return tuple(sorted(out))


# ------------------------------------------------------------------------------------------- constraints
class Constraint(ABC):
    """What a field accepts: `check` validates and normalises, `text` says it in words, `parse` reads a CLI value."""

    text: str = "a value"
    optional: bool = False

    @abstractmethod
    def check(self, name: str, value: Any) -> Any:
        """`value` validated and normalised, or a ConfigError naming `name`."""

    def __call__(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        return self.check(name, value)

    def parse(self, value: str) -> Any:
        """The value of a command-line string (argparse `type`)."""
        return value

    def describe(self) -> str:
        return self.text + (" or None" if self.optional else "")


@dataclass(frozen=True)
class Number(Constraint):
    """A finite number (an int with `integer`) in an optional range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    @property
    def text(self) -> str:  # type: ignore[override]
        return ("an integer" if self.integer else "a number") + _range_text(
            self.low, self.high, self.low_open, self.high_open)

    def check(self, name: str, value: Any) -> Any:
        return check_number(name, value, self.low, self.high, self.low_open, self.high_open, self.integer)

    def parse(self, value: str) -> Any:
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Bool(Constraint):
    text: str = "a bool"

    def check(self, name: str, value: Any) -> bool:
        return check_bool(name, value)


@dataclass(frozen=True)
class Choice(Constraint):
    choices: tuple[Any, ...] = ()

    @property
    def text(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(map(repr, self.choices))

    def check(self, name: str, value: Any) -> Any:
        return check_choice(name, value, self.choices)


@dataclass(frozen=True)
class Text(Constraint):
    """A string; `nonempty` refuses blank ones."""

    nonempty: bool = False

    @property
    def text(self) -> str:  # type: ignore[override]
        return "a non-empty string" if self.nonempty else "a string"

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            raise ConfigError(f"{name} must be {self.text}, {_got(value)}")
        return value


@dataclass(frozen=True)
class Layers(Constraint):
    """Decoder layers (0-based, distinct); None = the method's default range. CLI: ``2,5,9``."""

    text: str = "decoder layers such as 2,5,9"
    optional: bool = True

    def check(self, name: str, value: Any) -> tuple[int, ...] | None:
        return check_layers(name, value)

    def parse(self, value: str) -> tuple[int, ...]:
        return tuple(int(v) for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Numbers(Constraint):
    """A non-empty sequence of finite numbers > 0 (a tuple of floats). CLI: ``1,1.5,2``."""

    text: str = "numbers > 0 such as 1,1.5,2"

    def check(self, name: str, value: Any) -> tuple[float, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise ConfigError(f"{name} must be a non-empty sequence of numbers > 0, {_got(value)}")
        return tuple(check_number(name, v, low=0.0, low_open=True) for v in value)

    def parse(self, value: str) -> tuple[float, ...]:
        return tuple(float(v) for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Dims(Constraint):
    """Hidden dimensions (ints >= 0, a tuple) or the path of a JSON that lists them; None = the known table."""

    text: str = "hidden dims such as 1415,2533 or a calibration JSON path"
    optional: bool = True

    def check(self, name: str, value: Any) -> tuple[int, ...] | str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if isinstance(value, Sequence) and value and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
            return tuple(int(d) for d in value)
        raise ConfigError(f"{name} must be non-negative hidden dims (e.g. (1415, 2533)), a JSON path or None, "
                          f"{_got(value)}")

    def parse(self, value: str) -> tuple[int, ...] | str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if parts and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        return value


@dataclass(frozen=True)
class Custom(Constraint):
    """A field-specific rule: `fn(name, value) -> normalised value` raising ConfigError."""

    fn: Callable[[str, Any], Any] = lambda name, value: value
    text: str = "a value"
    cli: Callable[[str], Any] | None = None
    optional: bool = False

    def check(self, name: str, value: Any) -> Any:
        return self.fn(name, value)

    def parse(self, value: str) -> Any:
        return self.cli(value) if self.cli is not None else value


def setting(default: Any, help: str, rule: Constraint, cli: bool = True) -> Any:
    """A config field with its help text and constraint (read by `validate()` and the CLI's flags).

    `cli=False` keeps a field out of the generic ``--<method>-<field>`` flags (e.g. a prompt template).
    """
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule, "cli": cli})


# ------------------------------------------------------------------------------------------- the base
@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's settings: frozen, validated on construction, saved as versioned JSON.

    Class attributes (not fields): `name` (registry and CLI key), `description` (one line for ``--help``) and
    `version` (bumped when a field's meaning changes; `load` refuses a file of another version).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against its declared rule and store the normalised value (ConfigError on failure)."""
        cls = type(self).__name__
        for f in dataclasses.fields(self):
            rule = f.metadata.get("rule")
            if rule is not None:
                object.__setattr__(self, f.name, rule(f"{cls}.{f.name}", getattr(self, f.name)))

    @classmethod
    def settings(cls) -> dict[str, dataclasses.Field]:
        """Field name -> dataclass field (with ``metadata["help"]`` and ``metadata["rule"]``), in order."""
        return {f.name: f for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (tuples stay tuples; `save` writes them as JSON lists)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict of settings; unknown keys are refused naming them and the class."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} settings must be a mapping of field -> value, {_got(data)}")
        known = cls.settings()
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigError(f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(known)}")
        return cls(**dict(data))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"method", "version", "settings"}`` as JSON; returns the path."""
        try:
            text = json.dumps({"method": self.name, "version": self.version, "settings": self.to_dict()}, indent=2)
        except TypeError as exc:
            raise ConfigError(f"{type(self).__name__} holds a value JSON cannot store ({exc}); "
                              "save such objects on their own and pass their path") from None
        out = Path(path)
        out.write_text(text + "\n")
        return out

    @classmethod
    def load(cls: type[C], path: str | os.PathLike[str]) -> C:
        """Read a file written by `save`; refuses another method's file and another version."""
        try:
            record = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if not isinstance(record, dict) or not {"method", "version", "settings"} <= set(record):
            raise ConfigError(f"{path} is not a saved method config (needs method, version and settings)")
        if record["method"] != cls.name:
            raise ConfigError(f"{path} holds a {record['method']!r} config, not {cls.__name__} ({cls.name!r})")
        if record["version"] != cls.version:
            raise ConfigError(f"{path} was saved by {cls.__name__} version {record['version']}, this is version "
                              f"{cls.version}: re-create the file with the current settings")
        return cls.from_dict(record["settings"])
