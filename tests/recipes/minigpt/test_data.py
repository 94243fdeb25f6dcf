"""minigpt tokenizers, the memmap token file and its reuse, windows, SFT masks, label smoothing."""

import json

import numpy as np
import pytest

from jaxft.data.records import DataError
from jaxft.recipes.minigpt import data as mdata
from jaxft.tokenization.char import build_char_vocab, char_tokenizer
from jaxft.tokenization.sentencepiece import sentencepiece_tokenizer, train_sentencepiece

TEXTS = [f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7}.\n  Indented, and an emoji 😀."
         for i in range(300)] + ["### Instruction: add two\n### Response:\n 2 plus 2 is 4."] * 20


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def spm_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"spm_{request.param}")
    from jaxft.data.corpus import demo_corpus

    train_sentencepiece(demo_corpus()[:1500] + TEXTS, out, vocab_size=600, model_type=request.param)
    return out


def test_sentencepiece_tokenizer_matches_sentencepiece(spm_dir):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    probes = TEXTS[:50] + ["x### Response:\ny", "new\n\nlines\tand  double  spaces ", "unseen: ß漢字 ✓"]
    for tok in (sentencepiece_tokenizer(spm_dir / "tokenizer.model"), AutoTokenizer.from_pretrained(spm_dir)):
        for text in probes:
            ids = tok.encode(text, add_special_tokens=False)
            assert ids == sp.encode(text), text
            assert tok.decode(ids) == sp.decode(ids) == text
    tok = sentencepiece_tokenizer(spm_dir)
    marker = tok.encode("a ### Response:\nb", add_special_tokens=False)
    assert sp.piece_to_id("###\u2581Response:") in marker  # one piece for the marker
    assert "<0xF0>" in tok.convert_ids_to_tokens(tok.encode("🦊", add_special_tokens=False))  # byte fallback
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_a_model_trained_with_sentencepiece_defaults_normalizes_as_sentencepiece(model_type, tmp_path):
    """SentencePiece's default rule (nmt_nfkc, extra whitespace removed), as a reference user trains it: the
    model's own compiled rule runs, so NFKC folding, whitespace collapsing and the marker piece give its ids."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from jaxft.data.corpus import demo_corpus

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(demo_corpus()[:1500] + TEXTS + ["ﬁne ①  Ｆｕｌｌ"] * 5),
                                   model_writer=buffer, vocab_size=600, model_type=model_type, byte_fallback=True,
                                   user_defined_symbols=["###\u2581Response:"], hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buffer.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.normalize("ﬁne ①  Ｆｕｌｌ\n") == "▁fine▁1▁Full"  # what the rule does, by sentencepiece itself
    tok = sentencepiece_tokenizer(tmp_path / "tokenizer.model")
    tok.save_pretrained(str(tmp_path))
    probes = TEXTS[:20] + ["ﬁne ①  Ｆｕｌｌ width", "  leading and trailing  \n", "new\n\nlines\tand  double  spaces ",
                           "### Instruction: add two\n### Response:\n 2 plus 2 is 4.", "x### Response:\ny",
                           "a ### Response:b", "Ⅻ ㍿ ｶﾀｶﾅ \u00a0nbsp\u3000ideographic", "é vs e\u0301", "\ufeffBOM", ""]
    for each in (tok, AutoTokenizer.from_pretrained(tmp_path)):
        for text in probes:
            ids = each.encode(text, add_special_tokens=False)
            assert ids == sp.encode(text), text
            assert each.decode(ids) == sp.decode(ids), text  # the normalised text: "ﬁ" comes back as "fi"
    text = "### Instruction: add two\n### Response:\n2 plus 2 is 4."
    ex = mdata.sft_example(text, tok, max_len=100)
    assert tok.decode(ex["input_ids"][list(ex["loss_mask"]).index(1):], skip_special_tokens=True) == "2 plus 2 is 4."


def test_bad_sentencepiece_file_is_named(tmp_path):
    from jaxft.tokenization import TokenizerError

    (tmp_path / "x.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="x.model"):
        sentencepiece_tokenizer(tmp_path / "x.model")


def test_char_tokenizer_numbers_sorted_characters(tmp_path):
    from transformers import AutoTokenizer

    tok = build_char_vocab(["hello", " world\n"], tmp_path)
    chars = sorted(set("hello world\n"))
    assert tok.encode("held\n", add_special_tokens=False) == [chars.index(c) for c in "held\n"]
    assert tok.decode(tok.encode("hello world\n", add_special_tokens=False)) == "hello world\n"
    assert tok.encode("z", add_special_tokens=False) == [tok.unk_token_id]
    assert char_tokenizer(tmp_path / "char_vocab.json").get_vocab() == tok.get_vocab()
    assert AutoTokenizer.from_pretrained(tmp_path).encode("old", add_special_tokens=False) == \
        tok.encode("old", add_special_tokens=False)


def test_token_file_written_once_and_reused(spm_dir, tmp_path, caplog):
    tok = sentencepiece_tokenizer(spm_dir)
    path = tmp_path / "tokens.bin"
    tokens = mdata.token_file(TEXTS, tok, path)
    assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
    expected = []
    for text in TEXTS:
        expected += tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    meta = json.loads((tmp_path / "tokens.bin.json").read_text())
    assert meta["num_tokens"] == len(expected) and meta["tokenizer"]["vocab_size"] == len(tok)
    mtime = path.stat().st_mtime_ns
    caplog.set_level("INFO", logger="jaxft")
    again = mdata.token_file(TEXTS, tok, path)
    assert path.stat().st_mtime_ns == mtime and "reusing" in caplog.text
    np.testing.assert_array_equal(np.asarray(again), expected)
    changed = mdata.token_file(TEXTS[:10], tok, path)  # other sources: tokenized again
    assert len(changed) < len(expected)
    other = build_char_vocab(TEXTS, tmp_path / "char")
    assert len(mdata.token_file(TEXTS[:10], other, path)) > len(changed)  # other tokenizer: again


def test_split_and_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    train, valid = mdata.split_stream(tokens)
    assert len(train) == 900 and valid[0] == 900
    it = mdata.WindowBatches(train, batch_size=4, seq_len=16, seed=3)
    first = [next(it) for _ in range(3)]
    b = first[0]
    assert b["input_ids"].shape == (4, 16) and b["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(b["targets"], b["input_ids"] + 1)  # contiguous windows of seq_len + 1
    assert b["targets"].max() < 900
    state = it.get_state()
    nxt = next(it)
    it2 = mdata.WindowBatches(train, batch_size=4, seq_len=16, seed=3)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["input_ids"], nxt["input_ids"])  # resumes exactly
    evals = list(mdata.eval_windows(valid, batch_size=2, seq_len=16))
    assert len(evals) == 3 and evals[0]["input_ids"][0, 0] == 900 and evals[0]["input_ids"][1, 0] == 916


def test_unigram_baseline():
    train = np.array([0, 0, 1, 2])
    valid = np.array([0, 1])
    p = (np.array([2, 1, 1]) + 1) / 7
    assert mdata.unigram_loss(train, valid, 3) == pytest.approx(-(np.log(p[0]) + np.log(p[1])) / 2)


def test_sft_mask_on_hand_made_examples(tmp_path):
    tok = build_char_vocab(["### Instruction: Response:\nabcdxyz"], tmp_path)
    text = "### Instruction: ab\n### Response:\nxy"
    ex = mdata.sft_example(text, tok, max_len=100)
    ids = list(ex["input_ids"])
    start = text.index("xy")
    # every character before the response is masked out; 'x' (the first response token), 'y' and EOS are targets
    assert list(ex["loss_mask"]) == [0] * start + [1, 1, 1]
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[start:start + 2]) == "xy"
    # the LAST marker counts: a response quoting the marker keeps only what follows the last one
    two = "### Instruction: a\n### Response:\nx\n### Response:\ny"
    ex2 = mdata.sft_example(two, tok, max_len=100)
    assert list(ex2["loss_mask"]).index(1) == two.rindex("y")
    # truncation keeps the head; a cut inside the prompt drops the example (reported by sft_examples)
    assert mdata.sft_example(text, tok, max_len=start + 1)["loss_mask"].sum() == 1
    assert mdata.sft_example(text, tok, max_len=start) is None
    with pytest.raises(DataError, match="record 2"):
        mdata.sft_examples([text, "no marker here"], tok, max_len=100)
    with pytest.raises(DataError, match="empty"):
        mdata.sft_example("### Instruction: a\n### Response:\n", build_char_vocab(["a"], tmp_path / "c2"),
                          max_len=100)


def test_a_response_marker_without_its_newline(tmp_path):
    tok = build_char_vocab(["### Instruction: Response:\nabcdxyz"], tmp_path)
    text = "### Instruction: ab ### Response: xy"  # the reference finds '### Response:' with or without '\n'
    ex = mdata.sft_example(text, tok, max_len=100)
    assert list(ex["loss_mask"]) == [0] * text.index(" xy") + [1, 1, 1, 1]  # ' ', 'x', 'y', EOS


def test_a_text_of_many_examples_is_many_records(tmp_path):
    examples = mdata.demo_sft_texts(300, seed=3)
    text = "\n\n".join(examples) + "\n"  # the reference's SFT layout: one .txt, examples one after another
    tok = build_char_vocab([text], tmp_path)
    texts, origins = mdata.split_examples([text], ["sft.txt:1"])
    assert texts == examples and origins[:3] == ["sft.txt:1", "sft.txt:5", "sft.txt:9"]
    got = mdata.sft_examples([text], tok, max_len=160, origins=["sft.txt:1"])
    assert len(got) == 300
    for example, want in zip(got, examples):
        first = list(example["loss_mask"]).index(1)
        assert tok.decode(example["input_ids"][first:-1]) == want.split("### Response:\n")[1]
    # a text before the first example is a record of its own, and its error names its line
    with pytest.raises(DataError, match=r"^notes.txt:1: no '### Response:' marker"):
        mdata.sft_examples(["a preamble\n" + text], tok, max_len=96, origins=["notes.txt:1"])
    assert mdata.split_examples(["### Instruction: one\n### Response:\nx"]) == (
        ["### Instruction: one\n### Response:\nx"], ["record 1"])  # one example: kept as it is


def test_sft_mask_with_sentencepiece_marker(spm_dir):
    tok = sentencepiece_tokenizer(spm_dir)
    text = "### Instruction: add two\n### Response:\n 2 plus 2 is 4."
    ex = mdata.sft_example(text, tok, max_len=100)
    pieces = tok.convert_ids_to_tokens(list(ex["input_ids"]))
    first = list(ex["loss_mask"]).index(1)
    assert tok.decode(ex["input_ids"][:first]) == "### Instruction: add two\n### Response:\n"
    assert pieces[first].startswith("\u2581")  # the response's own leading space is its first target
    assert tok.decode(ex["input_ids"][:-1]) == text  # (decoding a fragment would drop that space)
    assert pieces[first - 2] == "###\u2581Response:"  # SentencePiece's own piece


def test_demo_sft_texts_are_well_formed():
    texts = mdata.demo_sft_texts(50, seed=1)
    assert texts == mdata.demo_sft_texts(50, seed=1) and len(set(texts)) > 30
    assert all(t.startswith("### Instruction: ") and t.count(mdata.RESPONSE_MARKER) == 1 for t in texts)
