"""Chat rendering and tokenization: answer-only loss, answer position, truncation, the token cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxft.recipes.movielens import encoding, prompts


@pytest.fixture
def tokenizer(demo_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))


def _records(prepared_dir):
    return json.loads((prepared_dir / "train.json").read_text())


def _check_layout(tok, rec, enc):
    text = encoding.render(tok, prompts.chat_messages(rec))
    whole = tok(text, add_special_tokens=False)["input_ids"]
    # Tokenizing prompt / answer / end of turn apart gives the same ids as the whole text
    # (less the template's final newline, which carries no loss and is left out).
    assert enc.input_ids.tolist() == whole[:len(enc.input_ids)] and len(whole) - len(enc.input_ids) == 1
    targets = [tok.convert_ids_to_tokens(int(i)) for i, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert "".join(targets) == rec["output"] + "<|im_end|>"
    first_answer = int(enc.input_ids[enc.answer_index + 1])
    assert first_answer == encoding.answer_token_ids(tok)[0 if rec["output"] == "Yes" else 1]
    assert enc.loss_mask[enc.answer_index + 1] == 1 and enc.loss_mask[:enc.answer_index + 1].sum() == 0


def test_answer_only_loss_and_answer_position(prepared_dir, tokenizer):
    for rec in _records(prepared_dir):
        _check_layout(tokenizer, rec, encoding.encode_record(tokenizer, rec, 1024))


def test_qwen_tokenizer_layout(prepared_dir):
    from jaxft.tokenization import qwen_tokenizer

    tok = qwen_tokenizer()
    yes, no = encoding.answer_token_ids(tok)
    assert tok.convert_ids_to_tokens([yes, no]) == ["Yes", "No"]
    for rec in _records(prepared_dir):
        _check_layout(tok, rec, encoding.encode_record(tok, rec, 1024))


def test_right_truncation(prepared_dir, tokenizer):
    rec = _records(prepared_dir)[0]
    full = encoding.encode_record(tokenizer, rec, 1024)
    n = len(full.input_ids)
    keep_answer = encoding.encode_record(tokenizer, rec, n - 1)  # only the end-of-turn marker is cut
    assert keep_answer.truncated and keep_answer.answer_index == full.answer_index
    assert keep_answer.input_ids.tolist() == full.input_ids[:n - 1].tolist()
    lost = encoding.encode_record(tokenizer, rec, full.answer_index + 1)  # the answer is cut
    assert lost.truncated and lost.answer_index == -1 and lost.loss_mask.sum() == 0
    ex = encoding.EncodedSet.build([lost]).example(0)
    assert ex["has_answer"] == 0 and not full.truncated


def test_bad_answer_names_the_record(tokenizer):
    rec = prompts.record(["1. A (2000) (rating ≈ 4.0)"], "B (2001)", "Maybe", 1)
    with pytest.raises(ValueError, match=r"^train\.json\[3\]: column 'output' is 'Maybe'"):
        encoding.encode_records(tokenizer, [rec], 64, origins=["train.json[3]"])


def test_token_cache_hit_and_keys(prepared_dir, tokenizer, tmp_path):
    path = prepared_dir / "train.json"
    records = _records(prepared_dir)
    cache = tmp_path / "cache"
    first, hit1 = encoding.encode_cached("train", path, records, tokenizer, 128, cache)
    second, hit2 = encoding.encode_cached("train", path, records, tokenizer, 128, cache)
    assert (hit1, hit2) == (False, True) and len(list(cache.glob("*.npz"))) == 1
    for name in ("ids", "loss_mask", "offsets", "answer_index", "is_yes", "truncated"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert second.is_yes.tolist() == [int(r["output"] == "Yes") for r in records]
    _, hit = encoding.encode_cached("train", path, records, tokenizer, 64, cache)  # another cutoff
    assert not hit
    tokenizer.chat_template = tokenizer.chat_template.replace("'\\n'", "'\\n\\n'", 1)  # another template
    _, hit = encoding.encode_cached("train", path, records, tokenizer, 128, cache)
    assert not hit
    path.write_text(path.read_text() + "\n")  # another source file
    _, hit = encoding.encode_cached("train", path, records, tokenizer, 128, cache)
    assert not hit and len(list(cache.glob("*.npz"))) == 4
