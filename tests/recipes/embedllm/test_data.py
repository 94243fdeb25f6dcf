"""Conversation reading, text-column detection, turn splitting, skip counts and example layout."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from jaxft.data.records import DataError
from jaxft.recipes.embedllm.data import (CANDIDATE_COLUMNS, ExampleBuilder, Layout, conversation_text,
                                         detect_text_column, parse_conversations, read_hf, read_local, split_turns)
from jaxft.tokenization.demo import demo_tokenizer

SEP = "<|turn|>"


@pytest.mark.parametrize("column", CANDIDATE_COLUMNS)
def test_text_column_detected_on_saved_datasets(tmp_path, column):
    """Each candidate column is found; it wins over the columns listed after it and over 'other'."""
    later = CANDIDATE_COLUMNS[CANDIDATE_COLUMNS.index(column) + 1:]
    rows = {"other": ["x", "y"], column: [f"a{SEP}b", f"c{SEP}d{SEP}e"]}
    rows.update({c: ["wrong", "wrong"] for c in later})
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    assert read_hf(str(tmp_path / "ds")) == [f"a{SEP}b", f"c{SEP}d{SEP}e"]


def test_first_column_when_no_candidate_and_override(tmp_path):
    datasets.Dataset.from_dict({"dialog": [f"a{SEP}b"], "text2": ["z"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_hf(str(tmp_path / "ds")) == [f"a{SEP}b"]
    assert read_hf(str(tmp_path / "ds"), text_column="text2") == ["z"]
    with pytest.raises(DataError, match="no column 'nope'"):
        read_hf(str(tmp_path / "ds"), text_column="nope")


def test_dataset_dict_uses_train_else_first_split(tmp_path):
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": [f"v{SEP}w"]}),
                               "test": datasets.Dataset.from_dict({"text": [f"t{SEP}u"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert read_hf(str(tmp_path / "dd")) == [f"v{SEP}w"]
    dd["train"] = datasets.Dataset.from_dict({"text": [f"r{SEP}s"]})
    dd.save_to_disk(str(tmp_path / "dd2"))
    assert read_hf(str(tmp_path / "dd2")) == [f"r{SEP}s"]


def test_message_lists_are_joined(tmp_path):
    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    datasets.Dataset.from_dict({"messages": messages}).save_to_disk(str(tmp_path / "ds"))
    assert read_hf(str(tmp_path / "ds")) == [f"user: hi{SEP}assistant: hello"]
    assert conversation_text(["a", "b", "c"]) == f"a{SEP}b{SEP}c"
    assert conversation_text({"user": "q", "assistant": "a"}) == f"q{SEP}a"


def test_local_json_and_jsonl(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps([{"conversation": f"a{SEP}b"}, {"conversation": f"c{SEP}d"}]))
    assert read_local(tmp_path / "c.json") == [f"a{SEP}b", f"c{SEP}d"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": ["x", "y"]}) + "\n\n" + json.dumps({"messages": ["z"]}))
    assert read_local(tmp_path / "c.jsonl") == [f"x{SEP}y", "z"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"conversation": "a"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        read_local(tmp_path / "bad.jsonl")
    (tmp_path / "miss.jsonl").write_text(json.dumps({"conversation": "a"}) + "\n" + json.dumps({"other": "b"}))
    with pytest.raises(DataError, match=r"miss.jsonl:2: column 'conversation' is missing"):
        read_local(tmp_path / "miss.jsonl")


def test_skipped_records_are_counted():
    texts = [f"a{SEP}b{SEP}c", "only one", f"x{SEP}  {SEP}", f"p{SEP}{SEP}q", ""]
    convs, stats = parse_conversations(texts)
    assert convs == [["a", "b", "c"], ["p", "q"]]
    assert (stats.records, stats.kept, stats.too_few_turns, stats.empty_turns) == (5, 2, 3, 4)
    assert "2 of 5 conversations kept; skipped 3 with fewer than two turns; dropped 4 empty turns" in str(stats)
    assert split_turns(f" a {SEP}b{SEP}") == (["a", "b"], 1)


def test_example_layout_loss_on_last_turn_only_and_cuts():
    tok = demo_tokenizer("byte")
    layout = Layout(max_turns=2, max_turn_tokens=4, max_last_turn_tokens=6)
    build = ExampleBuilder(tok, layout)
    ex = build(["old", "abcdefgh", "xy", "last"])
    # the two newest history turns, oldest first; the long one cut to 4 tokens
    assert build.stats.histories_cut == 1 and build.stats.turns_cut == 1
    assert tok.decode(ex["history_ids"][0][ex["history_mask"][0] == 1]) == "abcd"
    assert tok.decode(ex["history_ids"][1][ex["history_mask"][1] == 1]) == "xy"
    # slot 0 is the prefix slot; every last-turn token (and EOS) is a target, nothing else
    assert ex["input_ids"][0] == tok.pad_token_id
    np.testing.assert_array_equal(ex["loss_mask"], [0, 1, 1, 1, 1, 1])
    assert tok.decode(ex["input_ids"][1:5]) == "last" and ex["input_ids"][5] == tok.eos_token_id
    ex = build(["h", "a much longer last turn"])
    assert build.stats.last_turns_cut == 1 and len(ex["input_ids"]) == 7


def test_detect_without_columns_is_an_error():
    with pytest.raises(DataError, match="has no columns"):
        detect_text_column([], where="x")
