"""Files that ship inside the package: the sample picture, the toy model, the demo-settings file name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_FILE = "vlm_attn_demo.json"  # VAR demo settings written beside a tiny model


def toy_model_path() -> Path:
    """The small LLaVA-architecture model trained on the toy COCO set that ships inside the package.

    It really looks at the image and really hallucinates the objects its training set paired (fork/knife,
    car/traffic light, dog/frisbee, apple/banana); `scripts/train_toy_vlm.py` rebuilds it.
    """
    return Path(str(resources.files("vlm_attn") / "assets" / "toy_vlm"))


def sample_image_path() -> Path:
    """The bundled sample picture (a synthetic street scene: car, tree, traffic light), for no-download demos."""
    return Path(str(resources.files("vlm_attn") / "assets" / "sample.png"))
