"""The COCO category synonym table that CHAIR maps caption words through.

The table ships as package data (``vlm_attn/eval/data/chair_synonyms.txt``, a verbatim copy of the reference
list of Rohrbach et al. 2018, BSD 2-Clause). Parsing follows the reference exactly: each line is stripped and
split on ``", "``, the first entry is the category, and every entry maps to it. Two entries (``" motor bike"``,
``" cheesecake"``) keep a leading space and so can never match a token; that quirk is part of the metric and is
kept on purpose so that numbers stay comparable with published CHAIR scores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Mapping

SYNONYMS_RESOURCE = "chair_synonyms.txt"
_COMMENT = "#"


@dataclass(frozen=True)
class SynonymTable:
    """Parsed synonym table.

    Attributes:
        lines: the entries of every category line, in file order (first entry = category).
        inverse: entry -> category; when an entry occurs on two lines the later line wins, as in the reference.
    """

    lines: tuple[tuple[str, ...], ...]
    inverse: Mapping[str, str]

    @property
    def categories(self) -> tuple[str, ...]:
        """The 80 COCO category names, in file order."""
        return tuple(line[0] for line in self.lines)

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every entry that a (merged) caption token can match."""
        return frozenset(self.inverse)

    def category(self, word: str) -> str | None:
        """Category of ``word``, or None when it is not a COCO object word."""
        return self.inverse.get(word)


def data_lines(text: str) -> list[str]:
    """The table's lines as stored, without comment lines and blank lines (used for comparisons)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith(_COMMENT)]


def parse_synonyms(text: str) -> SynonymTable:
    """Parse synonym-table text with the reference rules (strip the line, split on ``", "``)."""
    lines = tuple(tuple(line.strip().split(", ")) for line in data_lines(text))
    inverse: dict[str, str] = {}
    for entries in lines:
        for entry in entries:
            inverse[entry] = entries[0]
    return SynonymTable(lines=lines, inverse=MappingProxyType(inverse))


def synonyms_text() -> str:
    """Raw text of the packaged synonym table (comments included)."""
    return resources.files("vlm_attn.eval").joinpath("data", SYNONYMS_RESOURCE).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def load_synonyms() -> SynonymTable:
    """The packaged synonym table, parsed once (the result is immutable)."""
    return parse_synonyms(synonyms_text())
