"""CHAIR object-hallucination metric (Rohrbach et al. 2018) in the OPERA/PAI variant that papers report.

A caption is lower-cased, tokenised and lemmatised (``vlm_attn.eval.lemmatize``), adjacent pairs are merged by
the COCO phrase rules (``vlm_attn.eval.chair_rules``), ``seat`` is dropped when ``toilet`` occurs, and every
remaining token found in the synonym table (``vlm_attn.eval.synonyms``) is a *mention* of its COCO category.
Ground truth per image = categories of its instance annotations plus categories mentioned in its human captions
(found by the same procedure). A mention whose category is not in the ground truth is hallucinated.

Corpus metrics (fractions in [0, 1], not percentages; ``Len`` in tokens):
- ``CHAIR_S``: captions with at least one hallucinated mention / captions;
- ``CHAIR_I``: hallucinated mentions / all mentions (repeats count every time);
- ``Recall``: sum over captions of |distinct mentioned categories in GT| / sum of |GT|;
- ``Precision``: the same numerator / sum of |distinct mentioned categories| (as PAI reports it);
- ``F1``: harmonic mean of the two; ``Len``: mean token count after phrase merging (PAI's "Len").
Where the reference divides by zero (no mentions at all), 0.0 is reported.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from vlm_attn.eval.chair_rules import drop_toilet_seats, merge_phrases
from vlm_attn.eval.lemmatize import Lemmatizer, LemmatizerKind, get_lemmatizer
from vlm_attn.eval.synonyms import SynonymTable, load_synonyms

logger = logging.getLogger(__name__)

AnnotationSource = Mapping[str, Any] | Sequence[Mapping[str, Any]]
METRIC_NAMES: tuple[str, ...] = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len")


@dataclass(frozen=True)
class CaptionObjects:
    """What CHAIR reads out of one caption.

    Attributes:
        tokens: lemmas after phrase merging (their count is the caption's length).
        words: the matched CHAIR words in caption order, repeats kept.
        objects: the COCO category of each word.
    """

    tokens: tuple[str, ...]
    words: tuple[str, ...]
    objects: tuple[str, ...]


@dataclass(frozen=True)
class CaptionScore:
    """Per-caption CHAIR detail (``hallucinated`` holds ``{"word", "object"}`` pairs in caption order)."""

    image_id: int
    caption: str
    mentioned_words: list[str]
    mentioned_objects: list[str]
    hallucinated: list[dict[str, str]]
    gt_objects: list[str]
    n_tokens: int
    chair_s: int
    chair_i: float
    recall: float
    precision: float
    f1: float


@dataclass(frozen=True)
class ChairResult:
    """Corpus metrics, per-caption detail, and the lemmatiser that produced them ("nltk" or "offline")."""

    metrics: dict[str, float]
    counts: dict[str, int]
    captions: list[CaptionScore] = field(repr=False)
    lemmatizer: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "metrics": dict(self.metrics),
            "counts": dict(self.counts),
            "lemmatizer": self.lemmatizer,
            "captions": [asdict(c) for c in self.captions],
        }


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def _as_list(source: AnnotationSource) -> list[Mapping[str, Any]]:
    return [source] if isinstance(source, Mapping) else list(source)


class CHAIR:
    """CHAIR evaluator: build ground truth once, then score lists of ``{image_id, caption}`` records.

    ``lemmatizer`` is "auto" (nltk reference path when nltk and its data are installed, else offline), "nltk"
    (error with install instructions when data is missing) or "offline"; the chosen path is reported in
    every result as ``ChairResult.lemmatizer``.
    """

    def __init__(
        self,
        ground_truth: Mapping[int, Iterable[str]] | None = None,
        lemmatizer: LemmatizerKind | str | Lemmatizer = "auto",
        synonyms: SynonymTable | None = None,
    ) -> None:
        self.synonyms = synonyms or load_synonyms()
        self.lemmatizer: Lemmatizer = get_lemmatizer(lemmatizer) if isinstance(lemmatizer, str) else lemmatizer
        self.ground_truth: Mapping[int, frozenset[str]] = MappingProxyType(
            {int(k): frozenset(v) for k, v in (ground_truth or {}).items()}
        )

    @classmethod
    def from_coco(
        cls,
        instances: AnnotationSource,
        captions: AnnotationSource,
        image_ids: Iterable[int] | None = None,
        lemmatizer: LemmatizerKind | str | Lemmatizer = "auto",
    ) -> "CHAIR":
        """Evaluator whose ground truth comes from COCO-format instances and captions JSON dicts (one dict or
        a list, e.g. train+val). With ``image_ids`` only those images are processed (much faster)."""
        evaluator = cls(lemmatizer=lemmatizer)
        gt = evaluator.build_ground_truth(instances, captions, image_ids)
        evaluator.ground_truth = MappingProxyType(gt)
        return evaluator

    @property
    def lemmatizer_name(self) -> str:
        """"nltk" or "offline"."""
        return self.lemmatizer.name

    def caption_objects(self, caption: str) -> CaptionObjects:
        """Tokens, matched CHAIR words and their categories for one caption."""
        tokens = merge_phrases(self.lemmatizer.lemmas(caption.lower()))
        kept = drop_toilet_seats(tokens)
        words = tuple(w for w in kept if w in self.synonyms.inverse)
        return CaptionObjects(
            tokens=tuple(tokens), words=words, objects=tuple(self.synonyms.inverse[w] for w in words)
        )

    def build_ground_truth(
        self,
        instances: AnnotationSource,
        captions: AnnotationSource,
        image_ids: Iterable[int] | None = None,
    ) -> dict[int, frozenset[str]]:
        """Image id -> categories from instance annotations ∪ categories mentioned in human captions.

        Every wanted image gets an entry (possibly empty); without ``image_ids`` that is every image listed in
        the ``images`` arrays or referenced by an annotation.
        """
        instance_dicts, caption_dicts = _as_list(instances), _as_list(captions)
        if image_ids is None:
            wanted: set[int] = set()
            for d in instance_dicts + caption_dicts:
                wanted.update(int(img["id"]) for img in d.get("images", ()))
                wanted.update(int(a["image_id"]) for a in d.get("annotations", ()))
        else:
            wanted = {int(i) for i in image_ids}
        objects: dict[int, set[str]] = {i: set() for i in wanted}
        for d in instance_dicts:
            names = {c["id"]: c["name"] for c in d.get("categories", ())}
            for ann in d.get("annotations", ()):
                image_id = int(ann["image_id"])
                if image_id in objects:
                    name = names[ann["category_id"]]
                    category = self.synonyms.category(name)
                    if category is None:
                        raise ValueError(f"COCO category {name!r} is not in the CHAIR synonym table")
                    objects[image_id].add(category)
        n_caps = 0
        for d in caption_dicts:
            for ann in d.get("annotations", ()):
                image_id = int(ann["image_id"])
                if image_id in objects:
                    objects[image_id].update(self.caption_objects(ann["caption"]).objects)
                    n_caps += 1
        logger.info("CHAIR ground truth: %d images, %d human captions read", len(objects), n_caps)
        return {i: frozenset(v) for i, v in objects.items()}

    def evaluate(
        self,
        records: Iterable[Mapping[str, Any]],
        image_id_key: str = "image_id",
        caption_key: str = "caption",
        progress: bool = False,
    ) -> ChairResult:
        """Score ``{image_id, caption}`` records against the evaluator's ground truth (``progress``: a tqdm bar)."""
        records = list(records)
        ids = [int(r[image_id_key]) for r in records]
        unknown = sorted({i for i in ids if i not in self.ground_truth})
        if unknown:
            raise KeyError(f"no CHAIR ground truth for image ids {unknown[:10]} ({len(unknown)} in all)")
        return self.score(
            [str(r[caption_key]) for r in records], [self.ground_truth[i] for i in ids], image_ids=ids,
            progress=progress,
        )

    def score(
        self,
        captions: Sequence[str],
        gt_objects: Sequence[Iterable[str]],
        image_ids: Sequence[int] | None = None,
        progress: bool = False,
    ) -> ChairResult:
        """Score captions against explicit ground-truth category sets (one per caption; ``progress``: a tqdm bar)."""
        from tqdm.auto import tqdm

        if len(captions) != len(gt_objects):
            raise ValueError(f"{len(captions)} captions but {len(gt_objects)} ground-truth sets")
        if not captions:
            raise ValueError("CHAIR needs at least one caption")
        ids = list(image_ids) if image_ids is not None else list(range(len(captions)))
        details: list[CaptionScore] = []
        n_mentions = n_halluc = n_halluc_caps = n_tokens = 0
        n_correct = n_gt = n_distinct = 0
        rows = zip(ids, captions, gt_objects)
        for image_id, caption, gt_iter in tqdm(rows, total=len(captions), desc="CHAIR", unit="caption",
                                               disable=not progress):
            gt = frozenset(gt_iter)
            found = self.caption_objects(caption)
            hallucinated = [
                {"word": w, "object": o} for w, o in zip(found.words, found.objects) if o not in gt
            ]
            correct = {o for o in found.objects if o in gt}
            distinct = set(found.objects)
            recall = _ratio(len(correct), len(gt))
            precision = _ratio(len(correct), len(distinct))
            details.append(CaptionScore(
                image_id=image_id, caption=caption,
                mentioned_words=list(found.words), mentioned_objects=list(found.objects),
                hallucinated=hallucinated, gt_objects=sorted(gt), n_tokens=len(found.tokens),
                chair_s=int(bool(hallucinated)), chair_i=_ratio(len(hallucinated), len(found.words)),
                recall=recall, precision=precision, f1=_f1(precision, recall),
            ))
            n_mentions += len(found.words)
            n_halluc += len(hallucinated)
            n_halluc_caps += int(bool(hallucinated))
            n_tokens += len(found.tokens)
            n_correct += len(correct)
            n_gt += len(gt)
            n_distinct += len(distinct)
        recall = _ratio(n_correct, n_gt)
        precision = _ratio(n_correct, n_distinct)
        metrics = {
            "CHAIR_S": n_halluc_caps / len(captions),
            "CHAIR_I": _ratio(n_halluc, n_mentions),
            "Recall": recall,
            "Precision": precision,
            "F1": _f1(precision, recall),
            "Len": n_tokens / len(captions),
        }
        counts = {
            "captions": len(captions),
            "hallucinated_captions": n_halluc_caps,
            "mentions": n_mentions,
            "hallucinated_mentions": n_halluc,
            "gt_objects": n_gt,
            "covered_gt_objects": n_correct,
            "distinct_mentioned_objects": n_distinct,
            "tokens": n_tokens,
        }
        return ChairResult(metrics=metrics, counts=counts, captions=details, lemmatizer=self.lemmatizer_name)
