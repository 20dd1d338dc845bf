import json

import pytest

from ditaccel.errors import DitaccelError
from ditaccel.prompts import load_prompts, parse_seeds


def test_shipped_sets():
    assert len(load_prompts("parti")) == 1632
    assert len(load_prompts("drawbench")) == 200
    assert len(load_prompts("imagereward")) == 100
    assert len(load_prompts("coco")) >= 30000
    assert len(load_prompts("calibration")) == 36
    assert load_prompts("parti", limit=5) == load_prompts("parti")[:5]


def test_user_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["a cat", "a dog"]
    meta = {"id1": {"prompt": "a tree", "category": "plants"}, "id2": {"prompt": "a car", "category": "vehicles"}}
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    assert load_prompts(str(tmp_path / "meta_data.json")) == ["a tree", "a car"]


def test_bad_prompt_inputs(tmp_path):
    with pytest.raises(DitaccelError, match="unknown prompt set 'nope'"):
        load_prompts("nope")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DitaccelError, match="holds no prompts"):
        load_prompts(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DitaccelError, match="cannot read prompts"):
        load_prompts(str(tmp_path / "bad.json"))


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    for bad in ("", "a,b", "3-1", "1,,2"):
        with pytest.raises(DitaccelError, match="cannot parse seeds"):
            parse_seeds(bad)
