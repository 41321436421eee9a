"""A synthetic dataset in COCO 2014 format, for a small VLM that really sees and really hallucinates (issue 7).

Each image holds 1-4 objects of 16 COCO categories, each drawn with its own shape and colour so that it is
recognisable; captions come from several templates and name every object. Co-occurrence is biased on purpose:
in the training split, fork/knife, car/traffic light, dog/frisbee and apple/banana appear together 90% of the
time, so a model learns the language prior "where there is a fork there is a knife". The validation split pairs
them only half the time, which is where that prior turns into hallucination.

Layout written under OUT (what `vlm-attn eval --coco-root OUT` reads):

    OUT/train2014/COCO_train2014_%012d.jpg, OUT/val2014/COCO_val2014_%012d.jpg
    OUT/annotations/{instances,captions}_{train,val}2014.json
    OUT/pope/coco_pope_{random,popular,adversarial}.jsonl   (val split, POPE recipe: 3 yes + 3 no per image)

Deterministic from --seed. Usage: python scripts/make_toy_coco.py --out toy_coco [--train 6000 --val 300]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
# COCO category ids of the 16 categories (the official 2014 ids), drawn as (shape, colour).
CATEGORIES = {
    "car": 3, "traffic light": 10, "fork": 48, "knife": 49, "cup": 47, "bowl": 51, "dog": 18, "frisbee": 34,
    "cat": 17, "bench": 15, "apple": 53, "banana": 52, "clock": 85, "umbrella": 28, "bird": 16, "kite": 38,
}
PAIRS = [("fork", "knife"), ("car", "traffic light"), ("dog", "frisbee"), ("apple", "banana")]
TEMPLATES = [
    "the image shows {objs} .",
    "a picture of {objs} .",
    "there is {objs} in the image .",
    "in this picture we can see {objs} .",
    "this is a photo of {objs} .",
]


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def caption_for(names: list[str], rng: random.Random) -> str:
    """A caption naming every object once, in a shuffled order, from a random template."""
    names = names[:]
    rng.shuffle(names)
    phrases = [_article(n) for n in names]
    objs = phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]
    return rng.choice(TEMPLATES).format(objs=objs)


def sample_objects(rng: random.Random, pair_prob: float) -> list[str]:
    """1-4 distinct categories; a pair member brings its partner with probability `pair_prob` (room permitting)."""
    names = list(CATEGORIES)
    partners = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
    chosen: list[str] = []
    target = rng.randint(1, 4)
    while len(chosen) < target:
        name = rng.choice(names)
        if name in chosen:
            continue
        chosen.append(name)
        partner = partners.get(name)
        if partner and partner not in chosen and len(chosen) < 4 and rng.random() < pair_prob:
            chosen.append(partner)
    return chosen


def draw_object(d: ImageDraw.ImageDraw, name: str, box: tuple[int, int, int, int], rng: random.Random) -> None:
    """Draw one object inside `box` (left, top, right, bottom) with its category's shape and colour."""
    l, t, r, b = box
    w, h = r - l, b - t
    cx, cy = (l + r) / 2, (t + b) / 2
    if name == "car":
        d.rectangle([l, t + h * 0.35, r, b - h * 0.2], fill=(210, 30, 30))
        d.rectangle([l + w * 0.2, t + h * 0.15, r - w * 0.2, t + h * 0.4], fill=(210, 30, 30))
        for x in (l + w * 0.25, r - w * 0.25):
            d.ellipse([x - w * 0.12, b - h * 0.32, x + w * 0.12, b - h * 0.08], fill=(20, 20, 20))
    elif name == "traffic light":
        d.rectangle([cx - w * 0.18, t, cx + w * 0.18, b], fill=(30, 30, 30))
        for i, c in enumerate([(240, 40, 40), (240, 200, 40), (40, 200, 70)]):
            y = t + h * (0.18 + 0.32 * i)
            d.ellipse([cx - w * 0.12, y - h * 0.11, cx + w * 0.12, y + h * 0.11], fill=c)
    elif name == "fork":
        d.rectangle([cx - w * 0.05, t + h * 0.4, cx + w * 0.05, b], fill=(170, 170, 185))
        for dx in (-0.15, 0.0, 0.15):
            d.rectangle([cx + w * (dx - 0.03), t, cx + w * (dx + 0.03), t + h * 0.45], fill=(170, 170, 185))
        d.rectangle([cx - w * 0.18, t + h * 0.38, cx + w * 0.18, t + h * 0.46], fill=(170, 170, 185))
    elif name == "knife":
        d.polygon([(cx - w * 0.08, t), (cx + w * 0.1, t + h * 0.6), (cx - w * 0.08, t + h * 0.6)], fill=(200, 200, 215))
        d.rectangle([cx - w * 0.08, t + h * 0.6, cx + w * 0.06, b], fill=(60, 40, 20))
    elif name == "cup":
        d.polygon([(l + w * 0.15, t + h * 0.2), (r - w * 0.3, t + h * 0.2), (r - w * 0.38, b), (l + w * 0.23, b)],
                  fill=(245, 245, 245), outline=(90, 90, 90))
        d.arc([r - w * 0.45, t + h * 0.35, r - w * 0.05, t + h * 0.75], -90, 90, fill=(90, 90, 90), width=3)
    elif name == "bowl":
        d.pieslice([l, t - h * 0.1, r, b], 0, 180, fill=(150, 90, 40))
    elif name == "dog":
        d.ellipse([l, t + h * 0.3, r, b], fill=(140, 90, 50))
        d.polygon([(l + w * 0.1, t + h * 0.4), (l + w * 0.25, t), (l + w * 0.4, t + h * 0.4)], fill=(100, 60, 30))
        d.polygon([(r - w * 0.4, t + h * 0.4), (r - w * 0.25, t), (r - w * 0.1, t + h * 0.4)], fill=(100, 60, 30))
    elif name == "frisbee":
        d.ellipse([l, t + h * 0.25, r, b - h * 0.25], fill=(250, 140, 20))
        d.ellipse([l + w * 0.3, t + h * 0.4, r - w * 0.3, b - h * 0.4], fill=(200, 100, 10))
    elif name == "cat":
        d.ellipse([l + w * 0.1, t + h * 0.3, r - w * 0.1, b], fill=(120, 120, 130))
        d.polygon([(l + w * 0.15, t + h * 0.45), (l + w * 0.2, t), (l + w * 0.45, t + h * 0.35)], fill=(90, 90, 100))
        d.polygon([(r - w * 0.45, t + h * 0.35), (r - w * 0.2, t), (r - w * 0.15, t + h * 0.45)], fill=(90, 90, 100))
    elif name == "bench":
        d.rectangle([l, t + h * 0.3, r, t + h * 0.45], fill=(120, 75, 35))
        d.rectangle([l, t + h * 0.55, r, t + h * 0.68], fill=(120, 75, 35))
        for x in (l + w * 0.1, r - w * 0.18):
            d.rectangle([x, t + h * 0.55, x + w * 0.08, b], fill=(60, 40, 20))
    elif name == "apple":
        d.ellipse([l + w * 0.1, t + h * 0.2, r - w * 0.1, b], fill=(220, 20, 40))
        d.ellipse([cx, t, cx + w * 0.25, t + h * 0.25], fill=(40, 160, 40))
    elif name == "banana":
        d.arc([l, t - h * 0.4, r, b], 30, 150, fill=(250, 220, 40), width=max(3, int(w * 0.18)))
    elif name == "clock":
        d.ellipse([l, t, r, b], fill=(250, 250, 250), outline=(20, 20, 20), width=3)
        d.line([cx, cy, cx, t + h * 0.2], fill=(20, 20, 20), width=2)
        d.line([cx, cy, r - w * 0.25, cy], fill=(20, 20, 20), width=2)
    elif name == "umbrella":
        d.pieslice([l, t, r, b], 180, 360, fill=(130, 40, 170))
        d.line([cx, cy, cx, b], fill=(40, 40, 40), width=2)
    elif name == "bird":
        d.polygon([(l, t + h * 0.3), (cx, cy), (l + w * 0.35, t + h * 0.65)], fill=(40, 80, 220))
        d.polygon([(r, t + h * 0.3), (cx, cy), (r - w * 0.35, t + h * 0.65)], fill=(40, 80, 220))
    elif name == "kite":
        d.polygon([(cx, t), (r - w * 0.15, cy), (cx, b - h * 0.25), (l + w * 0.15, cy)], fill=(30, 170, 90))
        d.line([cx, b - h * 0.25, cx + w * 0.1, b], fill=(60, 60, 60), width=1)
    else:  # pragma: no cover
        raise ValueError(name)


def render(names: list[str], rng: random.Random) -> tuple[Image.Image, list[list[float]]]:
    """An image with the objects in distinct cells of a 2x2 layout (jittered); returns it and COCO bboxes."""
    bg = tuple(rng.randint(150, 235) for _ in range(3))
    im = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(im)
    cells = rng.sample(range(4), len(names))
    boxes = []
    half = SIZE // 2
    for name, cell in zip(names, cells):
        side = rng.randint(30, 42)
        x0 = (cell % 2) * half + rng.randint(0, half - side)
        y0 = (cell // 2) * half + rng.randint(0, half - side)
        draw_object(d, name, (x0, y0, x0 + side, y0 + side), rng)
        boxes.append([float(x0), float(y0), float(side), float(side)])
    return im, boxes


def make_split(out: Path, split: str, n: int, pair_prob: float, seed: int, first_id: int) -> dict:
    """Write one split's images and COCO JSON; returns {image_id: names} for POPE."""
    rng = random.Random(f"{seed}-{split}")
    img_dir = out / f"{split}2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns, caps, objects = [], [], [], {}
    for k in range(n):
        image_id = first_id + k
        names = sample_objects(rng, pair_prob)
        im, boxes = render(names, rng)
        file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
        im.save(img_dir / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": SIZE, "height": SIZE})
        for name, box in zip(names, boxes):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CATEGORIES[name], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
        for _ in range(2):
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": caption_for(names, rng)})
        objects[image_id] = names
    categories = [{"id": cid, "name": name, "supercategory": "toy"} for name, cid in CATEGORIES.items()]
    info = {"description": f"vlm-attn toy COCO ({split}), seed {seed}, pair probability {pair_prob}"}
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (ann_dir / f"instances_{split}2014.json").write_text(
        json.dumps({"info": info, "images": images, "annotations": anns, "categories": categories}))
    (ann_dir / f"captions_{split}2014.json").write_text(json.dumps({"info": info, "images": images,
                                                                    "annotations": caps}))
    return objects


def pope_questions(objects: dict[int, list[str]], train_objects: dict[int, list[str]], seed: int) -> dict:
    """POPE's recipe on the val split: images with >= 3 objects, 3 'yes' (present) and 3 'no' per image.

    Negatives: random (absent categories at random), popular (the most frequent absent categories in the training
    set), adversarial (the absent categories that co-occur most with the image's objects in the training set).
    """
    rng = random.Random(f"{seed}-pope")
    freq = Counter(n for names in train_objects.values() for n in names)
    co = Counter((a, b) for names in train_objects.values() for a in names for b in names if a != b)
    out: dict[str, list[dict]] = {"random": [], "popular": [], "adversarial": []}
    for image_id, names in sorted(objects.items()):
        if len(names) < 3:
            continue
        present = rng.sample(names, 3)
        absent = [c for c in CATEGORIES if c not in names]
        negatives = {
            "random": rng.sample(absent, 3),
            "popular": sorted(absent, key=lambda c: (-freq[c], c))[:3],
            "adversarial": sorted(absent, key=lambda c: (-sum(co[(n, c)] for n in names), c))[:3],
        }
        for split, negs in negatives.items():
            for obj, label in [(o, "yes") for o in present] + [(o, "no") for o in negs]:
                out[split].append({"question_id": len(out[split]) + 1, "image": f"COCO_val2014_{image_id:012d}.jpg",
                                   "text": f"Is there a {obj} in the image?", "label": label})
    return out


def make_toy_coco(out: str | Path, n_train: int = 6000, n_val: int = 300, seed: int = 0) -> Path:
    """Write the whole toy dataset under `out`; returns the path."""
    root = Path(out)
    train = make_split(root, "train", n_train, 0.9, seed, first_id=1)
    val = make_split(root, "val", n_val, 0.5, seed, first_id=1_000_001)
    pope_dir = root / "pope"
    pope_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in pope_questions(val, train, seed).items():
        (pope_dir / f"coco_pope_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = make_toy_coco(args.out, args.train, args.val, args.seed)
    sys.stdout.write(f"toy COCO written to {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
