"""Tokenise and lemmatise captions for CHAIR, with or without nltk data.

Two implementations share one interface, ``lemmas(text) -> list[str]`` on lower-cased text:

- ``NltkLemmatizer`` ("nltk"): the reference path of the OPERA/PAI CHAIR script: ``nltk.word_tokenize``,
  ``nltk.pos_tag``, then ``WordNetLemmatizer().lemmatize(token, pos)`` with the tag mapped J->adj, V->verb,
  N->noun, R->adv, anything else -> noun. It needs the nltk data packages punkt_tab (or punkt),
  averaged_perceptron_tagger_eng (or averaged_perceptron_tagger) and wordnet.
- ``OfflineLemmatizer`` ("offline"): needs no download. A regular-expression tokeniser close to nltk's Treebank
  tokeniser, and WordNet's noun lemmatisation (exception list, suffix rules, shortest valid form) run against a
  small shipped slice of WordNet 3.0: every noun that can decide whether a token matches a CHAIR word. For nouns
  it therefore gives nltk's answer exactly (plurals such as knives, mice, buses, benches, geese, skis; and the
  reference's own quirks: "men" stays "men" because WordNet lists it as a noun, "sports" becomes "sport" so
  "sports ball" never merges). The rules are nltk 3.9+'s; for CHAIR words older releases agree. It tags
  nothing, so it cannot reproduce verb or adjective lemmas of the reference ("seated" -> "seat" -> chair,
  "skiing" -> "ski", "potted" -> "pot" when the tagger calls them verbs); scores from the two paths can differ
  slightly for that reason, and every CHAIR result records which path ran.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Literal, Mapping, Protocol

logger = logging.getLogger(__name__)

LemmatizerKind = Literal["auto", "nltk", "offline"]

NLTK_DOWNLOAD_HINT = (
    "python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet"
    "  (nltk < 3.9: punkt averaged_perceptron_tagger wordnet)"
)

# WordNet's noun detachment rules (suffix, replacement), in WordNet's order.
NOUN_RULES: tuple[tuple[str, str], ...] = (
    ("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"),
    ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"),
)

_WORD = r"[^\W_]+"
_CLITIC_RE = re.compile(r"(?<=[^\W_])'(s|m|d|ll|re|ve)\b")
_NOT_RE = re.compile(r"(?<=[^\W_])n't\b")
_TOKEN_RE = re.compile(
    rf"n't|'(?:s|m|d|ll|re|ve)\b|\d+(?:[.,:]\d+)+|{_WORD}(?:['\-/]{_WORD})*|\.\.\.|--|\S"
)


class Lemmatizer(Protocol):
    """What CHAIR needs from a lemmatiser."""

    name: str

    def lemmas(self, text: str) -> list[str]:
        """Tokenise ``text`` (already lower-cased) and return one lemma per token."""
        ...


class NltkDataMissingError(LookupError):
    """nltk or one of its data packages is not installed; the message says how to install it."""


def offline_tokenize(text: str) -> list[str]:
    """Split text into Treebank-like tokens: words (hyphenated kept), clitics ('s, n't), numbers, punctuation."""
    text = _NOT_RE.sub(" n't", text.replace("cannot", "can not"))
    text = _CLITIC_RE.sub(r" '\1", text)
    return _TOKEN_RE.findall(text)


def _data_lines(name: str) -> list[str]:
    text = resources.files("vlm_attn.eval").joinpath("data", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@dataclass(frozen=True)
class NounMorphology:
    """The WordNet slice that the offline noun lemmatiser consults."""

    nouns: frozenset[str]
    exceptions: Mapping[str, tuple[str, ...]]

    def lemma(self, token: str) -> str:
        """WordNet's noun lemma of ``token``: shortest valid form among the token, its exception bases or rule
        outputs; the token itself when none is a known noun (nltk's ``WordNetLemmatizer.lemmatize``)."""
        if token in self.exceptions:
            forms = (token, *self.exceptions[token])
        else:
            forms = (token, *(token[: -len(old)] + new for old, new in NOUN_RULES if token.endswith(old)))
        valid = [form for form in dict.fromkeys(forms) if form in self.nouns]
        return min(valid, key=len) if valid else token


@functools.lru_cache(maxsize=1)
def load_noun_morphology() -> NounMorphology:
    """The shipped WordNet slice, read once (immutable by convention)."""
    exceptions = {}
    for line in _data_lines("wordnet_noun_exceptions.txt"):
        surface, bases = line.split("\t")
        exceptions[surface] = tuple(bases.split())
    return NounMorphology(
        nouns=frozenset(_data_lines("wordnet_nouns.txt")), exceptions=MappingProxyType(exceptions)
    )


class OfflineLemmatizer:
    """Regex tokeniser + WordNet noun lemmatisation from shipped data; no nltk needed."""

    name = "offline"

    def __init__(self) -> None:
        self._morphology = load_noun_morphology()

    def lemmas(self, text: str) -> list[str]:
        """One noun lemma per token of ``text``."""
        return [self._morphology.lemma(token) for token in offline_tokenize(text)]


def _wordnet_pos(tag: str) -> str:
    """Penn tag -> WordNet pos, as the reference maps it (None there falls back to noun)."""
    return {"J": "a", "V": "v", "N": "n", "R": "r"}.get(tag[:1], "n")


def nltk_missing() -> list[str]:
    """Which parts of the nltk reference path are unavailable ([] when it can run)."""
    try:
        import nltk
        from nltk.stem import WordNetLemmatizer
    except ImportError:
        return ["nltk (pip install nltk)"]
    missing = []
    probes = (
        ("tokenizer data punkt_tab/punkt", lambda: nltk.word_tokenize("a dog.")),
        ("tagger data averaged_perceptron_tagger_eng", lambda: nltk.pos_tag(["a", "dog"])),
        ("wordnet", lambda: WordNetLemmatizer().lemmatize("dogs")),
    )
    for what, probe in probes:
        try:
            probe()
        except LookupError:
            missing.append(what)
    return missing


def nltk_available() -> bool:
    """True when nltk and all three data packages are installed."""
    return not nltk_missing()


class NltkLemmatizer:
    """The reference path: nltk word_tokenize + pos_tag + WordNetLemmatizer with the tag."""

    name = "nltk"

    def __init__(self) -> None:
        missing = nltk_missing()
        if missing:
            raise NltkDataMissingError(
                f"the nltk CHAIR lemmatiser needs {', '.join(missing)}; install with `pip install nltk` and "
                f"`{NLTK_DOWNLOAD_HINT}`, or use lemmatizer='offline'"
            )
        import nltk
        from nltk.stem import WordNetLemmatizer

        self._nltk = nltk
        self._wnl = WordNetLemmatizer()

    def lemmas(self, text: str) -> list[str]:
        """One POS-aware WordNet lemma per nltk token of ``text``."""
        tagged = self._nltk.pos_tag(self._nltk.word_tokenize(text))
        return [self._wnl.lemmatize(word, pos=_wordnet_pos(tag)) for word, tag in tagged]


def get_lemmatizer(kind: LemmatizerKind | str = "auto") -> Lemmatizer:
    """Build a lemmatiser: "nltk" (raises NltkDataMissingError without data), "offline", or "auto" (nltk when
    it and its data are installed, else offline)."""
    if kind == "nltk":
        return NltkLemmatizer()
    if kind == "offline":
        return OfflineLemmatizer()
    if kind == "auto":
        missing = nltk_missing()
        if not missing:
            return NltkLemmatizer()
        logger.info("CHAIR: nltk path unavailable (missing %s); using the offline lemmatiser", ", ".join(missing))
        return OfflineLemmatizer()
    raise ValueError(f"lemmatizer must be 'auto', 'nltk' or 'offline', not {kind!r}")
