"""The packaged CHAIR synonym table: same lines as the reference list, parsed with the reference quirks."""

from __future__ import annotations

from vlm_attn.eval.synonyms import data_lines, load_synonyms, parse_synonyms, synonyms_text

from .conftest import shared_file


def test_table_equals_reference_file_line_for_line():
    reference = shared_file("chair", "synonyms.txt").read_text(encoding="utf-8").splitlines()
    assert data_lines(synonyms_text()) == reference
    assert len(reference) == 80


def test_categories_and_lookups():
    table = load_synonyms()
    assert len(table.categories) == 80
    assert table.categories[:3] == ("person", "bicycle", "car")
    assert table.categories[-1] == "toothbrush"
    assert table.category("people") == "person"
    assert table.category("motorbike") == "motorcycle"
    assert table.category("bow tie") == "tie"
    assert table.category("skis") == table.category("ski") == "skis"
    assert table.category("dining table") == "dining table"
    assert table.category("table") == "dining table"


def test_reference_quirks_are_kept():
    table = load_synonyms()
    # split on ", " keeps a leading space: these two entries can never equal a token
    assert table.category(" motor bike") == "motorcycle"
    assert table.category("motor bike") is None
    assert table.category(" cheesecake") == "cake"
    assert table.category("cheesecake") is None
    # captions are lower-cased, so the capitalised entry never matches
    assert table.category("iPhone") == "cell phone"
    assert table.category("iphone") is None
    # trailing spaces at the end of a line are stripped with the line
    assert table.category("bison") == "cow"
    assert table.category("chesterfield") == "couch"


def test_parse_skips_comments_and_later_line_wins():
    table = parse_synonyms("# comment\nfoo, bar\n\nbaz, bar, qux \n")
    assert table.lines == (("foo", "bar"), ("baz", "bar", "qux"))
    assert dict(table.inverse) == {"foo": "foo", "bar": "baz", "baz": "baz", "qux": "baz"}
    assert table.vocabulary == frozenset({"foo", "bar", "baz", "qux"})
