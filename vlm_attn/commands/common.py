"""Helpers shared by the command modules: output, model flags, method flags and configs.

Method flags are declared from the registry (`add_method_args`), parsed and validated without a model
(`parse_method_args` -> `MethodSpec`, called first by every command) and completed for the loaded model
(`build_configs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError

logger = logging.getLogger("vlm_attn.cli")


def write(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def parse_dims(value: str) -> tuple[int, ...] | str:
    """'1415,2533' -> (1415, 2533); anything else is a path to a calibration JSON."""
    from ..methods.config import Dims

    return Dims().parse(value)


# ------------------------------------------------------------------------------------------- method flags
# Short spellings kept beside the generic --<method>-<field> flags: (method, field) -> extra option strings.
ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("var", "p"): ("--p",), ("var", "rho"): ("--rho",), ("var", "tau"): ("--tau",),
    ("var", "sink_dims"): ("--sink-dims",), ("paint", "head_sensitivity"): ("--head-sensitivity",),
    ("funnel", "fallback"): ("--funnel-fallback",),
}
# Input-level flags shared by both input methods: dest -> {method: field}.
SHARED_INPUT_FLAGS: dict[str, dict[str, str]] = {
    "anchor_layer": {"funnel": "anchor_layer", "vicrop": "layer"},
    "focal_side": {"funnel": "focal_side", "vicrop": "bbox_size"},
}


def _dest(method: str, field: str) -> str:
    return f"method__{method}__{field}"


def _flag(method: str, field: str) -> str:
    return f"--{method}-{field.replace('_', '-')}"


def cli_methods() -> dict[str, Any]:
    """The registered methods the command line offers (those with a `MethodConfig`), by name."""
    from ..methods.config import MethodConfig
    from ..methods.registry import entries

    return {n: e for n, e in entries().items() if issubclass(e.config, MethodConfig)}


def methods_help() -> str:
    """One line per registered method: 'name: description'."""
    return "; ".join(f"{name}: {e.config.description}" for name, e in cli_methods().items())


def add_method_args(p: argparse.ArgumentParser, single: bool = False, default: str | None = None,
                    vqa: bool = True) -> None:
    """--method, --method-config and one --<method>-<field> flag per setting of every registered method.

    Flag types and help come from the config fields' metadata (`vlm_attn.methods.config.setting`); the short
    VAR flags (--p, --rho, --tau, --sink-dims), --head-sensitivity, --funnel-fallback, and the input-level
    --anchor-layer / --focal-side (funnel and vicrop) stay as aliases. `single`: one --method (inspect).
    """
    from ..methods.config import Bool

    what = "method to picture" if single else "method to apply (repeatable: attention methods compose in one " \
                                               "apply; at most one input-level method, funnel or vicrop)"
    p.add_argument("--method", action="store" if single else "append", default=default, metavar="NAME",
                   help=f"{what}; any case. Methods: {methods_help()}".replace("%", "%%"))
    p.add_argument("--method-config", default=None, metavar="FILE",
                   help='JSON file of per-method settings, e.g. {"var": {"p": 0.6, "rho": 0.5}}; '
                        "flags win over the file")
    if vqa:
        p.add_argument("--vqa", action="store_true",
                       help="short-answer VQA: append 'Answer the question using a single word or phrase.'")
    shared = p.add_argument_group("input-level methods (funnel, vicrop)")
    shared.add_argument("--anchor-layer", type=int, default=None,
                        help="funnel: --funnel-anchor-layer / vicrop: --vicrop-layer (default: per family)")
    shared.add_argument("--focal-side", type=int, default=None,
                        help="funnel: --funnel-focal-side / vicrop: --vicrop-bbox-size, in pixels (default: the "
                             "encoder input size)")
    for name, entry in cli_methods().items():
        group = p.add_argument_group(f"{name} settings (with --method {name})", entry.config.description)
        for field, f in entry.config.settings().items():
            if not f.metadata.get("cli", True) or "rule" not in f.metadata:
                continue
            rule = f.metadata["rule"]
            flags = (_flag(name, field), *ALIASES.get((name, field), ()))
            default = "" if f.default is None else f"; default {f.default!r}"
            text = f"{f.metadata['help']} ({rule.describe()}{default})".replace("%", "%%")
            if isinstance(rule, Bool):
                group.add_argument(*flags, dest=_dest(name, field), action=argparse.BooleanOptionalAction,
                                   default=None, help=text)
            else:
                group.add_argument(*flags, dest=_dest(name, field), type=rule.parse, default=None,
                                   metavar="V", help=text)


@dataclass(frozen=True)
class MethodSpec:
    """What --method, --method-config and the method flags ask for, checked without a model.

    `names` are the selected methods (lower case, in order), `settings` the keyword arguments per method (file
    entries overridden by flags) and `configs` the configs built from them (validated). `build_configs` adds the
    one model-dependent default (a demo model's VAR sink dims).
    """

    names: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, Any]] = dc_field(default_factory=dict)
    configs: tuple[Any, ...] = ()

    @property
    def input_name(self) -> str | None:
        """The input-level method selected (funnel / vicrop), or None."""
        from ..methods.registry import INPUT, lookup

        return next((n for n in self.names if lookup(n).kind == INPUT), None)

    @property
    def input_config(self) -> Any | None:
        """The input-level config, or None."""
        name = self.input_name
        return None if name is None else self.configs[self.names.index(name)]

    @property
    def attention_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n != self.input_name)


def read_method_config(path: str) -> dict[str, dict[str, Any]]:
    """The --method-config file as {method name (lower case): {setting: value}}; UserError naming the file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--method-config {file} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"--method-config {file} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    except UnicodeDecodeError:
        raise UserError(f"--method-config {file} is not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise UserError(f"--method-config {file} must hold a JSON object such as {{\"var\": {{\"p\": 0.6}}}}, "
                        f"got a {type(data).__name__}")
    known = cli_methods()
    out: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        name = key.lower()
        if name not in known:
            raise UserError(f"--method-config {file} names unknown method {key!r}; choose from: {', '.join(known)}")
        if not isinstance(value, dict):
            raise UserError(f"--method-config {file}: the entry for {key!r} must be an object of settings, got "
                            f"{value!r}")
        out[name] = value
    return out


def _selected(args: argparse.Namespace) -> tuple[str, ...]:
    from ..methods.registry import DECODING, INPUT

    raw = getattr(args, "method", None)
    names = [raw] if isinstance(raw, str) else list(raw or [])
    known = cli_methods()
    out: list[str] = []
    for name in names:
        low = name.lower()
        if low not in known:
            raise UserError(f"unknown method {name!r}; choose from: {', '.join(known)}")
        if low in out:
            raise UserError(f"--method {low} given twice: each method runs once; set its options once")
        out.append(low)
    inputs = [n for n in out if known[n].kind == INPUT]
    if len(inputs) > 1:
        raise UserError(f"at most one input-level method (funnel or vicrop), got {', '.join(inputs)}")
    decoding = [n for n in out if known[n].kind == DECODING]
    if decoding and inputs:  # each replaces the per-sample generation: one of them per run
        raise UserError(f"--method {decoding[0]} (a decoding method) does not combine with --method {inputs[0]} (an "
                        "input-level method): choose one of them, with any attention methods")
    return tuple(out)


def parse_method_args(args: argparse.Namespace) -> MethodSpec:
    """The model-free half of building method configs: call it before loading any model.

    Reads --method (any case; unknown, repeated or two input-level methods refused), --method-config (must be a
    JSON object of objects for selected methods with known settings) and every --<method>-<field> flag (refused
    for a method not selected), then builds and validates each config. Every problem is a one-line UserError.
    """
    from ..methods.config import ConfigError

    names = _selected(args)
    known = cli_methods()
    path = getattr(args, "method_config", None)
    from_file = read_method_config(path) if path else {}
    for name, values in from_file.items():
        if name not in names:
            raise UserError(f"--method-config {path} has settings for {name!r} but --method {name} is not selected: "
                            f"add --method {name} or remove the entry")
        cls = known[name].config
        fields = cls.settings()
        for key, value in values.items():
            if key not in fields:
                raise UserError(f"--method-config {path}: {cls.__name__} has no setting {key!r}; known: "
                                f"{', '.join(fields)}")
            rule = fields[key].metadata.get("rule")
            try:
                if rule is not None:
                    rule(f"{cls.__name__}.{key}", value)
            except ConfigError as exc:
                raise UserError(f"--method-config {path}: {exc}") from None
    settings: dict[str, dict[str, Any]] = {name: dict(from_file.get(name, {})) for name in names}
    for dest, targets in SHARED_INPUT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        chosen = [n for n in names if n in targets]
        if not chosen:
            raise UserError(f"--{dest.replace('_', '-')} is for funnel or vicrop: add --method funnel or --method "
                            "vicrop, or drop the flag")
        settings[chosen[0]][targets[chosen[0]]] = value
    for name, entry in known.items():
        for field in entry.config.settings():
            value = getattr(args, _dest(name, field), None)
            if value is None:
                continue
            if name not in names:
                raise UserError(f"{_flag(name, field)} is set but --method {name} is not selected: add --method "
                                f"{name} or drop the flag")
            settings[name][field] = value
    configs = tuple(known[name].config(**settings[name]) for name in names)  # ConfigError names Class.field
    return MethodSpec(names, settings, configs)


def build_configs(spec: MethodSpec, model: Any) -> list[Any]:
    """The attention-method configs of `spec` for `model`: the model-dependent half of `parse_method_args`.

    Its one model-dependent default: a toy/tiny demo model ships VAR sink dims and tau beside it
    (`vlm_attn.loading.demo_settings`; random or small weights have no massive activations), used when the
    user set no sink dims.
    """
    from ..loading import demo_settings

    configs = []
    for name, config in zip(spec.names, spec.configs):
        if name == spec.input_name:
            continue
        given = spec.settings.get(name, {})
        if name == "var" and "sink_dims" not in given:
            demo = demo_settings(model)
            if demo:
                logger.warning(
                    "demo model: using the sink dims %s and tau %s shipped beside it (%s)",
                    demo["sink_dims"], demo["tau"], demo.get("note", "small models have no massive activations"),
                )
                extra = {"sink_dims": tuple(demo["sink_dims"])}
                if "tau" not in given:
                    extra["tau"] = demo["tau"]
                config = dataclasses.replace(config, **extra)
        configs.append(config)
    return configs


def generate_text(model: Any, processor: Any, batch: Any, max_new_tokens: int) -> str:
    """Greedy answer to one prompt through `vlm_attn.steered_generate` (with what the applied methods need)."""
    import torch

    from ..api import steered_generate

    with torch.no_grad():
        out = steered_generate(model, **batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)[0].strip()


def format_report(report: dict[str, Any]) -> str:
    """A small text table of what each method did, per layer."""
    lines = [f"image tokens per sample: {report.get('image_tokens')}"]
    if "guidance" in report:  # the second branch's logits processor: PAI/PAINT guidance or a contrastive decoder
        contrast = [name for name in ("vcd", "icd", "m3id") if name in report]
        label = f"{contrast[0]} contrast branch" if contrast else "image-free guidance"
        lines.append(f"{label}: {report['guidance']}")
    for name, data in report.items():
        if not isinstance(data, dict):
            continue
        if not data.get("active", True):
            lines.append(f"{name}: inactive ({data.get('reason', '')})")
            continue
        per_layer = {k: v for k, v in data.items() if isinstance(v, dict)}
        if not per_layer:
            lines.append(f"{name}: {data}")
            continue
        cols = list(per_layer)
        lines.append(f"{name}:")
        lines.append("  layer  " + "  ".join(f"{c:>19}" for c in cols))
        for layer in sorted(next(iter(per_layer.values()))):
            lines.append(f"  {layer:>5}  " + "  ".join(f"{per_layer[c].get(layer, 0):>19}" for c in cols))
        for key, value in data.items():
            if not isinstance(value, (dict, list)) and key != "active":
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy-vlm",
                   help="hub id, local directory saved with save_pretrained, toy-vlm (default: the small model "
                        "trained on synthetic scenes that ships with the package) or tiny-<family> (random "
                        "weights built offline: a demo of the machinery, not of quality)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: where from_pretrained puts it)")
    p.add_argument("--dtype", default=None, help="auto, float32, float16 or bfloat16 (default: auto)")
