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

from ..errors import UserError

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
    """A COCO annotation file, parsed and shape-checked: a JSON object with ``images`` and ``annotations`` lists.
    A damaged file raises UserError naming it (and where the JSON breaks)."""
    logger.info("reading %s", path)
    fix = "re-download annotations_trainval2014.zip from cocodataset.org and unzip it again"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 JSON ({exc.reason} at byte {exc.start}); {fix}") from None
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a COCO annotation object, got a JSON {type(data).__name__}; {fix}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: no {key!r} list, so it is not a COCO annotation file; {fix}")
    return data


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


def image_id_of(value: Any) -> int | None:
    """A COCO image id from an id, its text, or a file name such as ``COCO_val2014_000000000042.jpg``; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _ID_RE.fullmatch(value.strip())
        return int(match.group(1)) if match else None
    return None


def _json_entry(value: Any) -> Any:
    """The id text of one JSON list entry: an id, a COCO file name, or an object's ``image_id``."""
    if isinstance(value, Mapping) and "image_id" in value:
        value = value["image_id"]
    if isinstance(value, str):
        match = _ID_RE.fullmatch(value.strip())
        return match.group(1) if match else value
    return value


def _jsonl_entries(path: Path, text: str) -> list[tuple[str, Any]]:
    """("line N", id text) per line of a JSON-lines file whose objects carry ``image_id`` (a caption file)."""
    located = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number}: not valid JSON ({exc.msg}, column {exc.colno}); a JSON-lines "
                            "image list has one object with an image_id per line") from None
        if not isinstance(row, Mapping) or "image_id" not in row:
            raise UserError(f"{path} line {number}: no image_id; a JSON-lines image list (e.g. a published caption "
                            "file) has one object with an image_id per line")
        located.append((f"line {number}", _json_entry(row)))
    return located


def read_image_list(path: str | Path) -> list[tuple[str, int]]:
    """A user's image list as (where, image id) pairs in file order; "line N" or "item N" says where each id is.

    Accepts the forms published CHAIR lists come in: JSON (``.json``: a list, a dict with ``image_ids``, or the
    result file of the CHAIR script, whose ``sentences`` list the scored captions; items are ids, COCO file names
    such as ``COCO_val2014_000000000042.jpg``, or objects with an ``image_id``, as in a caption file), JSON lines
    of such objects (a published caption file such as OPERA's ``log/chair_eval_results/*/greedy.jsonl``: its
    images are the paper's list), or text with one id or file name per line (blank lines and ``#`` comments are
    skipped).
    A bad entry, an id listed twice or an empty list raises UserError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    text = path.read_text(encoding="utf-8")
    located: list[tuple[str, Any]]
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); an image "
                            "list is a JSON list of ids or {\"image_ids\": [...]}") from None
        values = (data.get("image_ids", data.get("sentences")) if isinstance(data, Mapping) else data)
        if not isinstance(values, list):
            raise UserError(f"{path}: an image list is a JSON list of ids, {{\"image_ids\": [...]}} or a CHAIR "
                            "result file ({\"sentences\": [{\"image_id\": ...}, ...]})")
        located = [(f"item {i}", _json_entry(v)) for i, v in enumerate(values, 1)]
    elif text.lstrip().startswith("{"):
        located = _jsonl_entries(path, text)
    else:
        located = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                match = _ID_RE.fullmatch(line)
                located.append((f"line {number}", match.group(1) if match else line))
    pairs: list[tuple[str, int]] = []
    first_seen: dict[int, str] = {}
    for where, value in located:
        text_value = str(value)
        if isinstance(value, bool) or not (isinstance(value, int) or text_value.isdigit()):
            raise UserError(f"{path} {where}: not an image id: {value!r}; write one COCO id or file name per entry")
        image_id = int(text_value)
        if image_id in first_seen:
            raise UserError(f"{path} {where}: image {image_id} repeats {first_seen[image_id]}; list each image once")
        first_seen[image_id] = where
        pairs.append((where, image_id))
    if not pairs:
        raise UserError(f"{path}: the image list is empty")
    return pairs


def load_image_list(path: str | Path) -> list[int]:
    """The image ids of a user's image list, order kept (format and checks: ``read_image_list``)."""
    return [image_id for _, image_id in read_image_list(path)]
