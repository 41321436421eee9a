"""Tokenisers and lemmatisers for CHAIR: the offline path always, the nltk path where its data is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlm_attn.eval import lemmatize
from vlm_attn.eval.lemmatize import (
    NltkDataMissingError,
    OfflineLemmatizer,
    get_lemmatizer,
    load_noun_morphology,
    nltk_available,
    offline_tokenize,
)

WORDNET_TABLE = Path(__file__).parent / "data" / "wordnet_noun_lemmas.tsv"


def test_offline_tokenizer_matches_treebank_conventions():
    text = "a man's dog doesn't sit on the t-shirt, or 1,000 chairs; 3.5 inches! can't -- wait..."
    assert offline_tokenize(text) == [
        "a", "man", "'s", "dog", "does", "n't", "sit", "on", "the", "t-shirt", ",", "or", "1,000", "chairs",
        ";", "3.5", "inches", "!", "ca", "n't", "--", "wait", "...",
    ]
    assert offline_tokenize("two hot dogs.") == ["two", "hot", "dogs", "."]
    assert offline_tokenize("the bus/train station at 10:30") == ["the", "bus/train", "station", "at", "10:30"]


@pytest.mark.parametrize(
    ("word", "lemma"),
    [
        ("knives", "knife"), ("people", "people"), ("buses", "bus"), ("glasses", "glass"), ("benches", "bench"),
        ("mice", "mouse"), ("skis", "ski"), ("scissors", "scissors"), ("children", "child"), ("geese", "goose"),
        ("women", "woman"), ("sports", "sport"), ("dogs", "dog"), ("ponies", "pony"), ("sandwiches", "sandwich"),
        ("toothbrushes", "toothbrush"), ("oxen", "ox"), ("calves", "calf"), ("sheep", "sheep"),
        # WordNet lists "men" as a noun itself, and the shortest-form tie keeps it: "men" never becomes "man"
        ("men", "men"),
        ("suvs", "suv"),
        # not WordNet nouns: left alone, as nltk does (so a plural "smartphones" never matches "smartphone")
        ("smartphones", "smartphones"), ("televisons", "televisons"), ("running", "running"),
    ],
)
def test_offline_noun_lemmas(word, lemma):
    assert load_noun_morphology().lemma(word) == lemma


def test_offline_lemmas_equal_wordnet_on_every_chair_relevant_form():
    morphology = load_noun_morphology()
    pairs = [line.split("\t") for line in WORDNET_TABLE.read_text().splitlines() if not line.startswith("#")]
    assert len(pairs) == 437
    wrong = [(s, morphology.lemma(s), lemma) for s, lemma in pairs if morphology.lemma(s) != lemma]
    assert wrong == []


def test_offline_lemmatizer_pipeline():
    lem = OfflineLemmatizer()
    assert lem.name == "offline"
    assert lem.lemmas("two hot dogs and knives.") == ["two", "hot", "dog", "and", "knife", "."]


def test_get_lemmatizer_choices(monkeypatch):
    assert get_lemmatizer("offline").name == "offline"
    with pytest.raises(ValueError, match="'auto', 'nltk' or 'offline'"):
        get_lemmatizer("spacy")
    monkeypatch.setattr(lemmatize, "nltk_missing", lambda: ["wordnet"])
    assert get_lemmatizer("auto").name == "offline"
    with pytest.raises(NltkDataMissingError, match=r"needs wordnet.*python -m nltk\.downloader .*wordnet"):
        get_lemmatizer("nltk")


def test_nltk_request_without_data_says_how_to_install(monkeypatch):
    """Where the data is present (shared/data/nltk_data in the tests), its absence is simulated at the probe."""
    if nltk_available():
        monkeypatch.setattr(lemmatize, "nltk_missing", lambda: ["tagger data averaged_perceptron_tagger_eng"])
    with pytest.raises(NltkDataMissingError, match=r"python -m nltk\.downloader punkt_tab"):
        get_lemmatizer("nltk")
    assert get_lemmatizer("auto").name == "offline"


@pytest.mark.skipif(not nltk_available(), reason="nltk data (punkt_tab, averaged_perceptron_tagger_eng, wordnet) "
                    "not installed; the reference path cannot run here")
def test_nltk_path_reference_behaviour():
    lem = get_lemmatizer("nltk")
    assert lem.name == "nltk"
    assert get_lemmatizer("auto").name == "nltk"
    assert lem.lemmas("two hot dogs near the knives.") == ["two", "hot", "dog", "near", "the", "knife", "."]
    assert lem.lemmas("the men") == ["the", "men"]
