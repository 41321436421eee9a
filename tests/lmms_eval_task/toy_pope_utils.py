"""Hooks of the toy POPE lmms-eval task: images from disk, POPE's official yes/no rule, confusion-count metrics.

Written independently of vlm_attn.eval.pope so the test compares two implementations of the same metrics.
"""

from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def _official(text):
    first = text.split(".")[0] if "." in text else text
    return "no" if {"No", "not", "no"} & set(first.replace(",", "").split(" ")) else "yes"


def process_results(doc, results):
    row = {"pred": _official(results[0]), "gold": doc["answer"]}
    return {name: row for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")}


def _counts(rows):
    tp = sum(r["pred"] == "yes" and r["gold"] == "yes" for r in rows)
    fp = sum(r["pred"] == "yes" and r["gold"] == "no" for r in rows)
    fn = sum(r["pred"] == "no" and r["gold"] == "yes" for r in rows)
    return tp, fp, fn, len(rows)


def accuracy(rows):
    return sum(r["pred"] == r["gold"] for r in rows) / len(rows)


def precision(rows):
    tp, fp, _, _ = _counts(rows)
    return tp / (tp + fp) if tp + fp else 0.0


def recall(rows):
    tp, _, fn, _ = _counts(rows)
    return tp / (tp + fn) if tp + fn else 0.0


def f1(rows):
    p, r = precision(rows), recall(rows)
    return 2 * p * r / (p + r) if p + r else 0.0


def yes_ratio(rows):
    return sum(r["pred"] == "yes" for r in rows) / len(rows)
