"""The forms published 500-image CHAIR lists come in, read by ``--image-list``: id lists, COCO file names,
COCO-result JSON lists and JSON-lines caption files (OPERA's ``{image_id, caption}``)."""

from __future__ import annotations

import json

import pytest

from vlm_attn.errors import UserError
from vlm_attn.eval.coco import image_id_of, load_image_list, read_image_list


def test_json_list_of_caption_objects_and_file_names(tmp_path):
    path = tmp_path / "coco_results.json"
    path.write_text(json.dumps([{"image_id": 226988, "caption": "a pizza"}, "COCO_val2014_000000337443.jpg",
                                {"image_id": "112022", "caption": "people"}, 7]))
    assert load_image_list(path) == [226988, 337443, 112022, 7]


def test_caption_file_in_json_lines_is_a_list(tmp_path):
    path = tmp_path / "greedy.jsonl"
    path.write_text('{"image_id": 226988, "caption": "A woman."}\n\n{"image_id": 337443, "caption": "A street."}\n')
    assert read_image_list(path) == [("line 1", 226988), ("line 3", 337443)]
    path.write_text('{"image_id": 226988, "caption": "A woman."}\n{"caption": "no id"}\n')
    with pytest.raises(UserError, match=r"greedy\.jsonl line 2: no image_id"):
        read_image_list(path)
    path.write_text('{"image_id": 226988}\n{"image_id": 226988}\n')
    with pytest.raises(UserError, match="line 2: image 226988 repeats line 1; list each image once"):
        read_image_list(path)
    path.write_text('{"image_id": 1}\n{"image_id": 2\n')
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        read_image_list(path)


@pytest.mark.parametrize(
    ("value", "image_id"),
    [(42, 42), ("42", 42), (" COCO_val2014_000000000042.jpg ", 42), ("000000000042.jpg", 42), (True, None),
     ("dog.jpg", None), (4.0, None), (None, None)],
)
def test_image_id_of(value, image_id):
    assert image_id_of(value) == image_id


def test_chair_result_file_is_a_list(tmp_path):
    # what the CHAIR script saves (--save_path): overall metrics and one entry per scored caption
    path = tmp_path / "chair_results.json"
    path.write_text(json.dumps({"overall_metrics": {"CHAIRs": 0.5}, "sentences": [
        {"image_id": 42, "caption": "A dog.", "mscoco_hallucinated_words": []},
        {"image_id": 7, "caption": "A cat.", "mscoco_hallucinated_words": [["cat", "cat"]]}]}))
    assert load_image_list(path) == [42, 7]
    path.write_text(json.dumps({"images": [1, 2]}))
    with pytest.raises(UserError, match="a JSON list of ids, .*or a CHAIR result file"):
        load_image_list(path)
