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
    texts = [f"a{SEP}b{SEP}c", "only one", f"x{SEP}  {SEP}", f"p{SEP}{SEP}q", "", f" {SEP} "]
    convs, stats = parse_conversations(texts)
    # a single-turn conversation is kept (its prefix is the empty-history vector); no turn at all is skipped
    assert convs == [["a", "b", "c"], ["only one"], ["x"], ["p", "q"]]
    assert (stats.records, stats.kept, stats.no_turns, stats.single_turn, stats.empty_turns) == (6, 4, 2, 2, 6)
    assert "4 of 6 conversations kept (2 without history); skipped 2 with no turn; dropped 6 empty turns" in str(stats)
    assert split_turns(f" a {SEP}b{SEP}") == (["a", "b"], 1)


def test_whole_turns_within_the_conversation_budget():
    """History turns are never cut: the newest that fit the budget with the last turn are kept, the older dropped."""
    tok = demo_tokenizer("byte")
    layout = Layout(max_turns=3, max_conversation_tokens=12, max_last_turn_tokens=6)
    build = ExampleBuilder(tok, layout)
    ex = build(["old", "abcdefgh", "xy", "last"])  # last turn 4 + EOS = 5 tokens: 7 left for history
    kept = [tok.decode(ex["history_ids"][r][ex["history_mask"][r] == 1]) for r in range(3)]
    assert kept == ["xy", "", ""]  # "abcdefgh" (8) does not fit beside "xy" (2): it and "old" are dropped
    assert (build.stats.histories_cut, build.stats.turns_dropped) == (1, 2)
    ex = build(["old", "abcd", "xy", "last"])  # 2 + 4 = 6 <= 7, then "old" (3) would exceed: dropped
    assert [tok.decode(ex["history_ids"][r][ex["history_mask"][r] == 1]) for r in range(2)] == ["abcd", "xy"]
    assert (build.stats.histories_cut, build.stats.turns_dropped) == (2, 3)
    ex = build(["ab", "cd", "ef", "gh", "last"])  # max_turns 3: the oldest of four dropped
    assert tok.decode(ex["history_ids"][0][ex["history_mask"][0] == 1]) == "cd"
    assert (build.stats.histories_cut, build.stats.turns_dropped) == (3, 4)
    assert ex["history_ids"].shape == (3, 11)  # each row holds a turn as long as the budget less one token


def test_example_layout_loss_on_last_turn_only_and_cuts():
    tok = demo_tokenizer("byte")
    layout = Layout(max_turns=2, max_conversation_tokens=16, max_last_turn_tokens=6)
    build = ExampleBuilder(tok, layout, answer_fn=lambda target: 2)
    ex = build(["old", "abcdefgh", "xy", "last"])
    assert tok.decode(ex["history_ids"][0][ex["history_mask"][0] == 1]) == "abcdefgh"
    assert tok.decode(ex["history_ids"][1][ex["history_mask"][1] == 1]) == "xy"
    # slot 0 is the prefix slot; every last-turn token (and EOS) is a target, nothing else
    assert ex["input_ids"][0] == tok.pad_token_id
    np.testing.assert_array_equal(ex["loss_mask"], [0, 1, 1, 1, 1, 1])
    assert tok.decode(ex["input_ids"][1:5]) == "last" and ex["input_ids"][5] == tok.eos_token_id
    assert ex["answer_pos"].tolist() == [3] and tok.decode(ex["input_ids"][3:4]) == "s"
    ex = build(["h", "a much longer last turn"])
    assert build.stats.last_turns_cut == 1 and len(ex["input_ids"]) == 7
    ex = build(["only"])  # no history: every row masked, so the prefix is the empty-history vector
    assert ex["history_mask"].sum() == 0 and ex["loss_mask"].sum() == 5


def test_budget_must_exceed_the_last_turn():
    with pytest.raises(ValueError, match="max_conversation_tokens'=8: must exceed"):
        Layout(max_turns=2, max_conversation_tokens=8, max_last_turn_tokens=8)


def test_detect_without_columns_is_an_error():
    with pytest.raises(DataError, match="has no columns"):
        detect_text_column([], where="x")


def test_training_data_goes_through_load_records(tmp_path, monkeypatch):
    """Strings are read by jaxft.loaders.load_records (its max_records, on_error and hf keys apply); a
    detected column of message lists is joined instead."""
    from ml_collections import ConfigDict

    import jaxft.loaders
    from jaxft.config import data_section
    from jaxft.recipes.embedllm.data import read_conversations

    calls = []
    real = jaxft.loaders.load_records
    monkeypatch.setattr(jaxft.loaders, "load_records", lambda cfg, cols: calls.append(cols) or real(cfg, cols))
    rows = [{"conversation": f"a{SEP}b"}, {"conversation": ""}, {"conversation": f"c{SEP}d"}, {"conversation": "e"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    d = ConfigDict(data_section(path=str(tmp_path / "c.jsonl"), text_column="", on_error="skip", max_records=2))
    assert read_conversations(d) == ([f"a{SEP}b", f"c{SEP}d"], str(tmp_path / "c.jsonl"))
    assert calls == [("conversation",)]
    d.on_error = "raise"
    with pytest.raises(DataError, match=r"c.jsonl:2: column 'conversation' is empty"):
        read_conversations(d)
    datasets.Dataset.from_dict({"text": [f"x{SEP}y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_conversations(ConfigDict(data_section(hf_dataset=str(tmp_path / "ds"), text_column="")))[0] == \
        [f"x{SEP}y", "z"]
    assert calls[-1] == ("text",)
    (tmp_path / "m.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "hi"}, "yo"]}]))
    n = len(calls)
    assert read_conversations(ConfigDict(data_section(path=str(tmp_path / "m.json"), text_column="")))[0] == \
        [f"user: hi{SEP}yo"]
    assert len(calls) == n  # joined by read_local, not load_records
