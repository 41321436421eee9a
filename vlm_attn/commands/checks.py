"""Checks the commands run before any model is loaded (and, where the model's config matters, before any sample is
generated), so that bad input fails in one line without wasting a model load or a generation.

Each check raises `UserError` whose message names the problem and the fix; `vlm_attn.cli.main` prints it as one
line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError

logger = logging.getLogger("vlm_attn.cli")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")


# ------------------------------------------------------------------------------------------- settings
def check_positive(flag: str, value: int | None) -> None:
    """`value` of `flag` is None (default) or an integer >= 1."""
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def check_device(device: str | None) -> None:
    """The device exists on this machine: a CUDA/MPS device without that backend is refused before loading."""
    import torch

    if not device:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"--device {device!r} is not a device name ({exc}); use e.g. cpu, cuda or cuda:1") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine (no GPU, or a CPU-only torch "
                            "build); use --device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not known; use auto, float32, float16 or bfloat16")


def check_model_name(name: str) -> None:
    """`tiny-<family>` names a known family; a local directory holds a config of a supported family.

    A folder of an unsupported architecture (say a saved GPT-2) gets the supported-families message here, from its
    config.json alone, instead of transformers' list of every config class after a failed load.
    """
    from ..loading import TOY_MODEL
    from ..patches.base import KNOWN_UNSUPPORTED, supported_families
    from ..testing.tiny import TINY_PREFIX, tiny_families

    if name == TOY_MODEL:
        return
    if name.startswith(TINY_PREFIX):
        family = name[len(TINY_PREFIX):]
        if family not in tiny_families():
            raise UserError(f"--model {name}: no tiny model for {family!r}; choose tiny-<family> with family one of "
                            f"{', '.join(tiny_families())}")
        return
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return  # a hub id: the loader checks reachability and the cache
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"--model {name}: the folder has no config.json; pass a directory written by "
                        "save_pretrained (config.json, weights, processor files)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--model {name}: {config_file} is not valid JSON ({exc})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    supported = supported_families()
    if model_type in KNOWN_UNSUPPORTED:
        raise UserError(f"--model {name}: model_type {model_type!r} is not supported: "
                        f"{KNOWN_UNSUPPORTED[model_type]}. Supported families: {', '.join(supported)}")
    if model_type not in supported:
        raise UserError(f"--model {name}: model_type {model_type!r} is not a vision-language family vlm-attn "
                        f"supports; supported: {', '.join(supported)}")


# ------------------------------------------------------------------------------------------- images
def check_image_file(path: str | os.PathLike[str], flag: str = "--image") -> None:
    """The file exists, is not empty, and decodes completely as an image (PIL verify + load)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder, not an image file; pass a JPEG/PNG/WebP image")
    if not p.is_file():
        raise UserError(f"{flag} {p}: no such file")
    if p.stat().st_size == 0:
        raise UserError(f"{flag} {p}: the file is empty; pass a JPEG/PNG/WebP image")
    try:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:  # verify() does not decode the pixels: a truncated file fails only here
            im.load()
    except UnidentifiedImageError:
        raise UserError(f"{flag} {p}: not an image file PIL can read; pass a JPEG/PNG/WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{flag} {p}: the image is damaged or truncated ({' '.join(str(exc).split())}); "
                        "pass an intact image file") from None


def check_images(paths: Iterable[str | os.PathLike[str]] | None, flag: str = "--image") -> None:
    for path in paths or ():
        check_image_file(path, flag)


def check_image_folder(folder: str | os.PathLike[str] | None, flag: str = "--images") -> None:
    """A calibration folder exists and holds at least one image (each image is checked when it is read)."""
    if folder is None:
        return
    p = Path(folder)
    if not p.is_dir():
        raise UserError(f"{flag} {p}: no such folder; pass a folder of JPEG/PNG images")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir() if f.is_file()):
        raise UserError(f"{flag} {p}: the folder holds no image file ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")


# ------------------------------------------------------------------------------------------- method files
def _sink_file(value: str, tau: float) -> None:
    from ..methods.var import load_sink_dims

    p = Path(value)
    if not p.is_file():
        if "," in value or value.strip().lstrip("-").isdigit() or not p.suffix:
            raise UserError(f"--sink-dims {value!r}: not comma-separated non-negative integers (e.g. 1415,2533) and "
                            "no such file; pass dims or the JSON written by vlm-attn calibrate-sinks")
        raise UserError(f"--sink-dims {value}: no such file; write it with vlm-attn calibrate-sinks --out {value}")
    try:
        _, record = load_sink_dims(p)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--sink-dims {p}: not a calibrate-sinks JSON ({' '.join(str(exc).split())})") from None
    threshold = record.get("threshold")
    if isinstance(threshold, (int, float)) and float(threshold) != float(tau):
        logger.warning(
            "sink dims in %s were calibrated at threshold %g but VAR's tau is %g: tokens count as sinks only above "
            "tau; pass --tau %g to use the calibration's threshold", p, threshold, tau, threshold,
        )


def check_method_files(configs: Sequence[Any]) -> None:
    """Files the configs name (VAR sink dims, PAINT head sensitivity) exist and parse: before any model load."""
    from ..methods.heads import HeadSensitivity

    for config in configs:
        dims = getattr(config, "sink_dims", None)
        if isinstance(dims, (str, os.PathLike)):
            _sink_file(os.fspath(dims), float(config.tau))
        heads = getattr(config, "head_sensitivity", None)
        if isinstance(heads, (str, os.PathLike)):
            p = Path(heads)
            if not p.is_file():
                raise UserError(f"head sensitivity {p}: no such file; write it with vlm-attn calibrate-heads "
                                f"--model ... --out {p}")
            try:
                HeadSensitivity.load(p)
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"head sensitivity {p}: not a calibrate-heads JSON "
                                f"({' '.join(str(exc).split())})") from None


def check_against_model(configs: Sequence[Any], model: Any, processor: Any = None) -> None:
    """Checks that need the loaded model's config, run before the first generation: sink dims within the hidden
    size, a head-sensitivity file measured on this model, the input-level methods' anchor layer within the depth,
    then every other setting of the attention methods (layer indices, ...) by applying and removing them once.
    `None` entries (no input-level method) are skipped."""
    from ..methods.heads import HeadSensitivity
    from ..methods.var import load_sink_dims

    text = model.config.get_text_config()
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    for config in configs:
        dims = getattr(config, "sink_dims", None)
        if isinstance(dims, (str, os.PathLike)):
            try:
                dims, _ = load_sink_dims(dims, hidden)
            except ValueError as exc:
                raise UserError(f"--sink-dims: {' '.join(str(exc).split())}") from None
        if isinstance(dims, tuple) and hidden and any(d >= hidden for d in dims):
            bad = [d for d in dims if d >= hidden]
            raise UserError(f"sink dims {bad} are out of range for this model's hidden size {hidden} (dims are "
                            f"0 .. {hidden - 1}); run vlm-attn calibrate-sinks for this model")
        heads = getattr(config, "head_sensitivity", None)
        if heads is not None:
            record = heads if isinstance(heads, HeadSensitivity) else HeadSensitivity.load(heads)
            try:
                record.check_compatible(model.config)
            except ValueError as exc:
                raise UserError(f"head sensitivity: {' '.join(str(exc).split())}") from None
    _check_anchor_layers(configs, model)
    _check_binds(configs, model, processor)


def _check_anchor_layers(configs: Sequence[Any], model: Any) -> None:
    """Funnel's `anchor_layer` / ViCrop's `layer` (set with --anchor-layer) inside the language model's depth."""
    from ..methods.funnel import FunnelConfig
    from ..methods.vicrop import ViCropConfig
    from ..patches.base import get_adapter

    for config in configs:
        if isinstance(config, (FunnelConfig, ViCropConfig)):
            layer = config.anchor_layer if isinstance(config, FunnelConfig) else config.layer
            depth = len(get_adapter(model).decoder_layers())
            if layer is not None and not 0 <= layer < depth:
                raise UserError(f"anchor layer {layer} out of range for a {depth}-layer language model "
                                f"(0..{depth - 1}); pass --anchor-layer in that range or leave it unset for the "
                                "family default")


def _check_binds(configs: Sequence[Any], model: Any, processor: Any = None) -> None:
    """Apply the attention configs and remove them at once (the model is restored exactly): what binding them to
    this model refuses (e.g. `layers` beyond its depth) is refused before anything is generated."""
    from ..api import apply
    from ..methods.funnel import FunnelConfig
    from ..methods.vicrop import ViCropConfig

    attention = [c for c in configs if c is not None and not isinstance(c, (FunnelConfig, ViCropConfig))]
    if not attention:
        return
    try:
        handle = apply(model, attention, processor=processor)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(" ".join(str(exc).split())) from None
    handle.remove()


# ------------------------------------------------------------------------------------------- per command
def check_model_args(args: argparse.Namespace) -> None:
    """The flags every model-loading command shares: --model, --device, --dtype, --max-new-tokens."""
    check_model_name(args.model)
    check_device(getattr(args, "device", None))
    check_dtype(getattr(args, "dtype", None))
    check_positive("--max-new-tokens", getattr(args, "max_new_tokens", None))
