"""Text -> condense examples: the layout, the cross-tokenizer segment mapping, the continuation to the end
of the text, instruction records, the length filter over streamed records, batching and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxft.recipes.condense.data import (ExampleBuilder, Layout, continuation_targets, decoder_segment_starts,
                                         example_fields, segment_char_starts)
from tests.configs import recipe_config
from tests.recipes.condense.helpers import byte_tokenizer, word_tokenizer

TEXT = "the cat sat on the mat and then a dog ran far away"  # 13 words


def test_layout_ratio_is_tokens_per_condensed_state():
    seed = recipe_config("condense", "seed").condense
    from jaxft.recipes.condense.recipe import layout_from_config

    layout = layout_from_config(seed)
    assert (layout.total_condense_tokens, layout.max_tokens, layout.max_segments) == (512, 4096, 1)
    assert layout.continuation_width == layout.max_decoder_tokens  # the cap is off: the whole remainder
    split = Layout.create(max_tokens=4096, compression_ratio=8.0, num_segments=4, max_decoder_tokens=8)
    assert (split.num_condense_tokens, split.segment_length, split.total_condense_tokens) == (128, 1024, 512)
    with pytest.raises(ValueError, match="condense.compression_ratio.*not a positive whole number"):
        Layout.create(max_tokens=100, compression_ratio=3.0, max_decoder_tokens=8)
    with pytest.raises(ValueError, match="condense.num_segments"):
        Layout.create(max_tokens=96, compression_ratio=8.0, num_segments=5, max_decoder_tokens=8)
    with pytest.raises(ValueError, match="condense.max_continuation_tokens"):
        Layout.create(max_tokens=16, compression_ratio=2.0, max_decoder_tokens=8, max_continuation_tokens=-1)


def test_cross_tokenizer_segment_mapping_mid_word():
    # Encoder: one token per character; decoder: whole words. Segments of 5 characters cut
    # "cat" and "sat" in the middle; the word covering a segment's first character starts it.
    text = "the cat sat"
    offsets = lambda tok: np.asarray(tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    enc_off, dec_off = offsets(byte_tokenizer()), offsets(word_tokenizer())
    starts = segment_char_starts(enc_off, 5)
    assert starts.tolist() == [0, 5, 10]
    assert decoder_segment_starts(dec_off, starts).tolist() == [0, 1, 2]


def test_continuation_targets_run_to_the_end():
    dec_ids = np.arange(10, 20, dtype=np.int32)
    ids, mask = continuation_targets(np.pad(dec_ids, (0, 6)), 10, np.array([0, 4, 7, 9]), num_segments=3,
                                     num_levels=4, width=5)
    assert ids.tolist() == [[14, 15, 16, 17, 18], [17, 18, 19, 0, 0], [19, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert mask.sum(-1).tolist() == [5, 3, 1, 0]


def test_example_with_remainder_cross_tokenizer():
    """Words for the encoder, bytes for the decoder: 8 words condensed in 2 segments; level 1 continues
    from segment 1 to the end of the text, level 2 (after the whole context) is the remainder."""
    layout = Layout.create(max_tokens=8, compression_ratio=2.0, num_segments=2, max_decoder_tokens=80)
    assert (layout.num_condense_tokens, layout.segment_length, layout.continuation_width) == (2, 4, 80)
    byte = byte_tokenizer()
    builder = ExampleBuilder(word_tokenizer(), byte, layout)
    ex = builder(TEXT)
    assert int(ex["num_segments"]) == 2 and ex["enc_mask"].all()
    # The AE target is the condensed context; the space before "a" stays with it.
    assert byte.decode(ex["dec_ids"][ex["dec_mask"]]) == "the cat sat on the mat and then "
    assert byte.decode(ex["cont_ids"][0][ex["cont_mask"][0]]) == "the mat and then a dog ran far away"
    assert byte.decode(ex["cont_ids"][1][ex["cont_mask"][1]]) == "a dog ran far away"
    assert builder.context_end(TEXT) == TEXT.index("a dog")
    capped = ExampleBuilder(word_tokenizer(), byte, Layout.create(
        max_tokens=8, compression_ratio=2.0, num_segments=2, max_decoder_tokens=80, max_continuation_tokens=6))(TEXT)
    assert capped["cont_ids"].shape == (2, 6) and byte.decode(capped["cont_ids"][1]) == "a dog "
    # A text shorter than the context: no remainder, so the last level has no target.
    short = builder("the cat sat on the mat")
    assert int(short["num_segments"]) == 2 and short["cont_mask"].sum(-1).tolist() == [7, 0]


def test_decoder_budget_cuts_the_text():
    layout = Layout.create(max_tokens=8, compression_ratio=2.0, num_segments=2, max_decoder_tokens=20)
    byte = byte_tokenizer()
    ex = ExampleBuilder(word_tokenizer(), byte, layout)(TEXT)
    # 20 bytes end inside "mat"; the text is cut there and both sides agree on it.
    assert byte.decode(ex["dec_ids"][ex["dec_mask"]]) == "the cat sat on the m"
    assert int(ex["enc_mask"].sum()) == 6 and int(ex["num_segments"]) == 2
    with pytest.raises(ValueError, match="no tokens"):
        ExampleBuilder(word_tokenizer(), byte, layout)("   ")


def test_instruction_example():
    layout = Layout.create(max_tokens=8, compression_ratio=2.0, num_segments=2, max_decoder_tokens=80,
                           max_prompt_tokens=6, max_completion_tokens=5)
    byte = byte_tokenizer()
    builder = ExampleBuilder(word_tokenizer(), byte, layout)
    ex = builder({"context": TEXT, "activation_prompt": "Who ran?", "expected_completion": "A dog."})
    assert byte.decode(ex["dec_ids"][ex["dec_mask"]]) == "the cat sat on the mat and then "
    # The prompt keeps its last 6 bytes, the completion its first 5; loss on the completion only.
    assert byte.decode(ex["ins_ids"][ex["ins_mask"]]) == "o ran?A dog"
    assert ex["ins_loss"].astype(int).tolist() == [0] * 6 + [1] * 5
    assert set(example_fields(layout)) >= {"ins_ids", "ins_mask", "ins_loss"}
    with pytest.raises(ValueError, match="no text column.*'expected_completion'"):
        builder({"context": TEXT, "activation_prompt": "Who?"})
    with pytest.raises(ValueError, match="needs records with columns"):
        builder(TEXT)


def test_min_length_filter_over_streamed_records(tmp_path):
    """``data.streaming`` reads a datasets directory row by row (``max_records`` of them); texts shorter
    than ``min_characters`` or without a whole first segment and a continuation are dropped and counted."""
    from jaxft.recipes.condense.recipe import load_items

    rows = [TEXT, "the cat", TEXT + " and then the cat sat", "the cat sat on", "a dog", TEXT]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    config = recipe_config("condense", "smoke")
    config.data.hf_dataset = str(tmp_path / "data")
    config.data.streaming = True
    config.data.max_records = 5
    config.condense.min_characters = 6
    builder = ExampleBuilder(word_tokenizer(), byte_tokenizer(), Layout.create(
        max_tokens=8, compression_ratio=2.0, num_segments=2, max_decoder_tokens=80))
    items, _, line = load_items(config, builder)
    assert items == [TEXT, TEXT + " and then the cat sat"]
    # "a dog" is short; "the cat" fills no segment; "the cat sat on" fills one with nothing after it.
    assert line.startswith("2 of 5 records kept (1 shorter than condense.min_characters=6 or empty, 2 without")


def condense_batches(records, example_fn, layout, **kw):
    from jaxft.data import make_batches

    return make_batches(records, example_fn=example_fn, fields=example_fields(layout), shard_index=0,
                        shard_count=1, **kw)


def test_batches_fill_and_resume():
    layout = Layout.create(max_tokens=8, compression_ratio=2.0, num_segments=2, max_decoder_tokens=40,
                           max_continuation_tokens=4)
    builder = ExampleBuilder(word_tokenizer(), byte_tokenizer(), layout)
    texts = ["the cat sat on the mat", "a dog ran far away", "and then slept", "the dog sat"]
    batches = list(condense_batches(texts, builder, layout, batch_size=3, shuffle=False, num_epochs=1))
    assert len(batches) == 2 and batches[1]["enc_ids"].shape == (3, 2, 4)
    assert batches[1]["dec_mask"].sum(-1).tolist()[1:] == [0, 0]  # filled-up rows carry nothing
    it = condense_batches(texts, builder, layout, batch_size=2, seed=3, num_epochs=None)
    next(it)
    state = it.get_state()
    expected = next(it)
    resumed = condense_batches(texts, builder, layout, batch_size=2, seed=3, num_epochs=None)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["dec_ids"], expected["dec_ids"])
    with pytest.raises(ValueError, match="record 1: .*has no column 'text'"):
        list(condense_batches([{"text": "the cat"}, {"body": "a dog"}], builder.record_fn("text"), layout,
                              batch_size=2, shuffle=False, num_epochs=1))
