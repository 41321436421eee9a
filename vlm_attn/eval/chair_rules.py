"""The hand-written COCO rules of CHAIR (Rohrbach et al. 2018, as kept by the OPERA/PAI evaluation script).

After lemmatisation, adjacent token pairs are merged left to right through a phrase table:
- 27 COCO "double words" are kept as one token (``"hot dog"``, ``"teddy bear"``, ...); ``"home plate"`` and
  ``"train track"`` are in the list only so that ``plate``/``train`` are consumed, and match no category;
- ``"baby X"`` / ``"adult X"`` -> ``X`` for animal words (otherwise ``baby``/``adult`` would fire *person*);
- ``"passenger jet"`` / ``"passenger train"`` -> ``jet`` / ``train`` (otherwise ``passenger`` fires *person*);
- ``"bow tie"`` -> ``tie``, ``"toilet seat"`` -> ``toilet``, ``"wine glas"`` -> ``"wine glass"`` (the last one
  catches a singulariser artefact of the original implementation).
Then, when ``toilet`` occurs in a caption, every ``seat`` is dropped (a toilet seat is not a chair).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Sequence

# The reference list holds 29 strings: "hot dog" and "teddy bear" appear twice; the 27 distinct ones are these.
DOUBLE_WORDS: tuple[str, ...] = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track",
)
ANIMAL_WORDS: tuple[str, ...] = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub",
)
VEHICLE_WORDS: tuple[str, ...] = ("jet", "train")


def _build_phrase_map() -> Mapping[str, str]:
    table = {phrase: phrase for phrase in DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"
    return MappingProxyType(table)


PHRASES: Mapping[str, str] = _build_phrase_map()


def merge_phrases(tokens: Sequence[str], phrases: Mapping[str, str] = PHRASES) -> list[str]:
    """Merge adjacent token pairs found in ``phrases``, scanning left to right without overlap."""
    merged: list[str] = []
    i = 0
    while i < len(tokens):
        pair = " ".join(tokens[i:i + 2])
        if pair in phrases:
            merged.append(phrases[pair])
            i += 2
        else:
            merged.append(tokens[i])
            i += 1
    return merged


def drop_toilet_seats(tokens: Sequence[str]) -> list[str]:
    """Remove every ``seat`` when ``toilet`` is also present (else "the seat of the toilet" fires *chair*)."""
    if "toilet" in tokens and "seat" in tokens:
        return [token for token in tokens if token != "seat"]
    return list(tokens)


def rule_words() -> frozenset[str]:
    """Every single word that the phrase rules look at (the lemmatiser must produce these faithfully)."""
    words: set[str] = set()
    for phrase, target in PHRASES.items():
        words.update(phrase.split())
        words.update(target.split())
    words.update(("toilet", "seat"))
    return frozenset(words)
