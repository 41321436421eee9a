"""COCO val2014 from a local folder, and the fixed image list that CHAIR runs on.

Expected layout under ``coco_root`` (the official archives ``val2014.zip`` and ``annotations_trainval2014.zip``
from cocodataset.org, unzipped in place)::

    coco_root/val2014/COCO_val2014_000000000042.jpg
    coco_root/annotations/instances_val2014.json
    coco_root/annotations/captions_val2014.json

The CHAIR protocol uses a fixed, recorded sample of val2014 images. ``sample_image_ids`` makes it portable:
``random.Random(seed).sample(sorted(ids), n)`` over the sorted, de-duplicated image ids, so the same seed and
the same id set give the same list on any machine and Python version (``Random.sample`` is stable across 3.x);
the list is returned sorted. Users with a published list load it with ``load_image_list`` instead.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_CHAIR_IMAGES = 500
DEFAULT_CHAIR_SEED = 0
IMAGE_NAME = "COCO_val2014_{:012d}.jpg"

_DOWNLOAD_HINT = {
    "images": "val2014.zip (COCO 2014 Val images) from cocodataset.org, unzipped into {root}",
    "annotations": "annotations_trainval2014.zip (COCO 2014 Train/Val annotations) from cocodataset.org, "
                   "unzipped into {root}",
}


class CocoFileMissingError(FileNotFoundError):
    """A COCO file or folder is missing; the message names it and the archive to download."""


def _require(path: Path, kind: str, root: Path) -> Path:
    if not path.exists():
        raise CocoFileMissingError(f"COCO file not found: {path}; download {_DOWNLOAD_HINT[kind].format(root=root)}")
    return path


@dataclass(frozen=True)
class CocoVal2014:
    """Paths of a local COCO val2014 copy; nothing is read until asked."""

    root: Path

    @property
    def image_dir(self) -> Path:
        return self.root / "val2014"

    @property
    def instances_path(self) -> Path:
        return self.root / "annotations" / "instances_val2014.json"

    @property
    def captions_path(self) -> Path:
        return self.root / "annotations" / "captions_val2014.json"

    def image_path(self, image_id: int, check: bool = True) -> Path:
        """Path of one image; with ``check`` a missing file raises CocoFileMissingError."""
        path = self.image_dir / IMAGE_NAME.format(int(image_id))
        return _require(path, "images", self.root) if check else path

    def check(self) -> None:
        """Raise CocoFileMissingError naming the first missing piece of the layout."""
        _require(self.instances_path, "annotations", self.root)
        _require(self.captions_path, "annotations", self.root)
        _require(self.image_dir, "images", self.root)

    def load_instances(self) -> dict[str, Any]:
        """The parsed ``instances_val2014.json``."""
        return _load_json(_require(self.instances_path, "annotations", self.root))

    def load_captions(self) -> dict[str, Any]:
        """The parsed ``captions_val2014.json``."""
        return _load_json(_require(self.captions_path, "annotations", self.root))

    def load_image(self, image_id: int) -> Image.Image:
        """The image as RGB PIL image."""
        from PIL import Image

        with Image.open(self.image_path(image_id)) as im:
            return im.convert("RGB")


def coco_val2014(coco_root: str | Path) -> CocoVal2014:
    """A ``CocoVal2014`` for ``coco_root`` (checked lazily; call ``.check()`` to fail early)."""
    return CocoVal2014(Path(coco_root).expanduser())


def _load_json(path: Path) -> dict[str, Any]:
    logger.info("reading %s", path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def image_ids(annotations: Mapping[str, Any]) -> list[int]:
    """Sorted ids of the ``images`` array of a COCO annotation dict."""
    return sorted({int(img["id"]) for img in annotations["images"]})


def sample_image_ids(ids: Iterable[int], n: int = DEFAULT_CHAIR_IMAGES, seed: int = DEFAULT_CHAIR_SEED) -> list[int]:
    """``random.Random(seed).sample(sorted(set(ids)), n)``, returned sorted: the portable CHAIR image list."""
    pool = sorted({int(i) for i in ids})
    if n > len(pool):
        raise ValueError(f"cannot sample {n} images from {len(pool)}")
    return sorted(random.Random(seed).sample(pool, n))


def save_image_list(path: str | Path, ids: Sequence[int], **provenance: Any) -> Path:
    """Write ``{"image_ids": [...], **provenance}`` as JSON (e.g. seed, n, source) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"image_ids": [int(i) for i in ids], **provenance}, indent=1) + "\n")
    return path


_ID_RE = re.compile(r"(?:COCO_\w+_)?(\d+)(?:\.jpg)?")


def load_image_list(path: str | Path) -> list[int]:
    """Read a user's image list, order kept.

    Accepts JSON (a list of ids, or a dict with ``image_ids``) or text with one id per line; a line may also be
    a COCO file name such as ``COCO_val2014_000000000042.jpg``. Blank lines and ``#`` comments are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image list not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        values = data["image_ids"] if isinstance(data, Mapping) else data
        return [int(v) for v in values]
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _ID_RE.fullmatch(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an image id: {line!r}")
        ids.append(int(match.group(1)))
    return ids
