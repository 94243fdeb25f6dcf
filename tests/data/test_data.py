"""Data layer: record reading, HF datasets, LM examples, grain batches, demo corpus and tokenizers."""

import json
from collections import Counter

import numpy as np
import pytest

from jaxft.data import (
    DataError,
    demo_corpus,
    lm_example,
    lm_example_fn,
    load_hf_dataset,
    make_batches,
    read_records,
    split_records,
    text_chunks,
)
from jaxft.tokenization import demo as demo_tokenization


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Corpus and tokenizer caches live in a temp dir shared by this module, never in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXFT_CACHE_DIR", str(tmp_path_factory.mktemp("jaxft_cache")))
        yield


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---- reading records ---------------------------------------------------------------------------


def test_jsonl_error_names_file_line_and_column(tmp_path):
    path = _write(tmp_path / "train.jsonl", '{"text": "one"}\n\n{"text": "two"}\n{"txt": "three"}\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == f"{path}:4: column 'text' is missing"


def test_skip_counts_every_kind_of_bad_record(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", "\n".join([
        '{"text": "good one", "id": 1}',
        '{"text": "broken"',
        '{"text": "   "}',
        '{"text": 42}',
        '["not", "an", "object"]',
        json.dumps({"text": "good two\u2028with a line separator"}, ensure_ascii=False),  # a raw U+2028
    ]))
    records = read_records(path, on_error="skip")
    assert records == [{"text": "good one"}, {"text": "good two\u2028with a line separator"}]
    assert (records.summary.files, records.summary.records, records.summary.skipped) == (1, 2, 4)
    assert records.summary.reasons == [
        f"{path}:2: invalid JSON at column 18: Expecting ',' delimiter",
        f"{path}:3: column 'text' is empty",
        f"{path}:4: column 'text' is int, expected a string",
        f"{path}:5: expected an object with column(s) ['text'], got list",
    ]
    assert str(records.summary).startswith("read 2 records from 1 file(s); skipped 4 bad record(s), e.g. ")


def test_json_list_and_data_key(tmp_path):
    rows = [{"prompt": "p0", "response": "r0"}, {"prompt": "p1", "response": "r1"}]
    plain = _write(tmp_path / "a.json", json.dumps(rows))
    wrapped = _write(tmp_path / "b.json", json.dumps({"data": [{"prompt": "p2", "response": 3}]}))
    assert read_records(plain, columns=("prompt", "response")) == rows
    with pytest.raises(DataError) as err:
        read_records(wrapped, columns=("prompt", "response"))
    assert str(err.value) == f"{wrapped}[0]: column 'response' is int, expected a string"
    broken = _write(tmp_path / "c.json", '[{"text": "x"},\n {"text": }]')
    with pytest.raises(DataError) as err:
        read_records(broken)
    assert str(err.value) == f"{broken}:2:11: invalid JSON: Expecting value"


def test_csv_rows_are_numbered_by_their_first_line(tmp_path):
    path = _write(tmp_path / "t.csv", 'id,text\n1,"spans\ntwo lines"\n2,\n3,fine\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == f"{path}:4: column 'text' is empty"
    assert read_records(path, on_error="skip") == [{"text": "spans\ntwo lines"}, {"text": "fine"}]
    with pytest.raises(DataError) as err:
        read_records(path, columns=("body",))
    assert str(err.value) == f"{path}:1: no column 'body' in the header (columns: id, text)"


def test_text_files_directories_globs_and_missing_paths(tmp_path):
    _write(tmp_path / "b.txt", "First paragraph\nstill first.\n\n\nSecond paragraph.\n")
    _write(tmp_path / "a.jsonl", '{"text": "from jsonl"}\n')
    (tmp_path / "notes.md").write_text("ignored: not a data suffix")
    assert read_records(tmp_path / "b.txt") == [{"text": "First paragraph\nstill first.\n\n\nSecond paragraph.\n"}]
    assert read_records(tmp_path, paragraphs=True) == [
        {"text": "from jsonl"}, {"text": "First paragraph\nstill first."}, {"text": "Second paragraph."}]
    assert read_records(str(tmp_path / "*.txt"), paragraphs=True).summary.records == 2
    with pytest.raises(DataError, match="no such file or directory: .*nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"no files match .*\*.csv"):
        read_records(str(tmp_path / "*.csv"))


def test_split_records_is_seeded_disjoint_and_ordered():
    records = [{"text": str(i)} for i in range(20)]
    train, val = split_records(records, 0.25, seed=7)
    assert (len(train), len(val)) == (15, 5)
    assert sorted(train + val, key=lambda r: int(r["text"])) == records
    assert [int(r["text"]) for r in val] == sorted(int(r["text"]) for r in val)
    assert split_records(records, 0.25, seed=7) == (train, val)
    assert split_records(records, 0.25, seed=8)[1] != val


# ---- Hugging Face datasets ---------------------------------------------------------------------


def test_load_hf_dataset_from_save_to_disk_and_data_files(tmp_path):
    import datasets

    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a b", "c d", ""], "label": [0, 1, 0]}),
        "validation": datasets.Dataset.from_dict({"text": ["e f"], "label": [1]}),
    })
    splits.save_to_disk(str(tmp_path / "saved"))
    records = load_hf_dataset(tmp_path / "saved", "train", on_error="skip")
    assert records == [{"text": "a b"}, {"text": "c d"}]
    assert records.summary.reasons == [f"{tmp_path / 'saved'}:train[2]: column 'text' is empty"]
    assert load_hf_dataset(tmp_path / "saved", "validation") == [{"text": "e f"}]
    with pytest.raises(DataError) as err:
        load_hf_dataset(tmp_path / "saved", "train", columns=("content",))
    assert str(err.value) == f"{tmp_path / 'saved'}:train: no column 'content' (available: text, label)"
    with pytest.raises(DataError) as err:
        load_hf_dataset(tmp_path / "saved", "test")
    assert str(err.value) == f"{tmp_path / 'saved'}: no split 'test' (available: train, validation)"
    with pytest.raises(DataError) as err:
        load_hf_dataset(tmp_path / "missing", "train")
    assert str(err.value) == f"no such directory: {tmp_path / 'missing'}"

    files = tmp_path / "files"
    files.mkdir()
    _write(files / "train.jsonl", '{"text": "x y"}\n{"text": "z"}\n')
    assert load_hf_dataset(files, "train", cache_dir=tmp_path / "hf_cache") == [{"text": "x y"}, {"text": "z"}]


# ---- causal-LM examples ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_tok():
    return demo_tokenization.demo_tokenizer("byte")


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_lm_example_masks_only_the_response(byte_tok):
    example = lm_example(byte_tok, "ok", 16, prompt="Q: ")
    assert example["input_ids"].tolist() == [1, *_ids(byte_tok, "Q: "), *_ids(byte_tok, "ok"), 2]
    assert example["loss_mask"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    plain = lm_example(byte_tok, "abc", 16)
    assert plain["input_ids"].tolist() == [1, *_ids(byte_tok, "abc"), 2]
    assert plain["loss_mask"].tolist() == [0, 1, 1, 1, 1]
    no_specials = lm_example(byte_tok, "abc", 16, add_bos=False, add_eos=False)
    assert no_specials["loss_mask"].tolist() == [0, 1, 1]


def test_lm_example_overflow_policies(byte_tok):
    text = "0123456789"  # 12 tokens with bos and eos
    assert lm_example(byte_tok, text, 8)["input_ids"].tolist() == [1, *_ids(byte_tok, "0123456")]
    with pytest.raises(DataError) as err:
        lm_example(byte_tok, text, 8, overflow="error", row=7)
    assert str(err.value) == "row 7: 12 tokens, more than max_len=8"
    with pytest.raises(DataError) as err:
        lm_example(byte_tok, "x", 4, prompt="long prompt", row="a.jsonl:3")
    assert str(err.value) == "row a.jsonl:3: no token carries loss within max_len=4 (the prompt alone takes 12 tokens)"
    chunks = lm_example(byte_tok, text, 5, overflow="chunk")
    full = [1, *_ids(byte_tok, text), 2]
    assert [c["input_ids"].tolist() for c in chunks] == [full[0:5], full[4:9], full[8:12]]
    assert [c["loss_mask"].tolist() for c in chunks] == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 1, 1, 1]]
    targets = [t for c in chunks for t, m in zip(c["input_ids"], c["loss_mask"]) if m]
    assert targets == full[1:]  # every target exactly once


def test_text_chunks_concatenate_and_cut(byte_tok):
    chunks = text_chunks(byte_tok, ["ab", "cde"], 4)
    stream = [1, *_ids(byte_tok, "ab"), 2, 1, *_ids(byte_tok, "cde"), 2]  # 9 tokens: two windows, tail dropped
    assert [c.tolist() for c in chunks] == [stream[0:4], stream[4:8]]
    assert all(c.dtype == np.int32 for c in chunks)
    batch = next(make_batches(chunks, example_fn=lambda ids: {"input_ids": ids}, batch_size=2, seq_len=4,
                              shuffle=False, shard_index=0, shard_count=1))
    assert batch["input_ids"].tolist() == [stream[0:4], stream[4:8]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]
    with pytest.raises(DataError, match="the texts hold 9 tokens, fewer than seq_len=10"):
        text_chunks(byte_tok, ["ab", "cde"], 10)


# ---- grain batches -----------------------------------------------------------------------------

RECORDS = [{"n": i} for i in range(37)]


def _example(record):
    """Record i -> 1..6 tokens valued 1000*i + position, so every token is traceable to its record."""
    n = record["n"]
    return {"input_ids": 1000 * n + np.arange(n % 6 + 1)}


def _batches(**kw):
    args = dict(example_fn=_example, batch_size=4, seq_len=8, seed=5, shard_index=0, shard_count=1) | kw
    return make_batches(RECORDS, **args)


def _first_ids(batches):
    return [int(i) // 1000 for b in batches for i, s in zip(b["input_ids"][:, 0], b["segment_ids"][:, 0]) if s]


@pytest.mark.parametrize("packing", [False, True])
def test_restored_state_continues_exactly(packing):
    uninterrupted = _batches(packing=packing)
    expected = [next(uninterrupted) for _ in range(18)]  # crosses an epoch boundary
    for k in (5, 11):
        first = _batches(packing=packing)
        for _ in range(k):
            next(first)
        state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
        resumed = _batches(packing=packing)
        resumed.set_state(state)
        for want in expected[k:]:
            got = next(resumed)
            assert sorted(got) == sorted(want)
            assert all(np.array_equal(got[key], want[key]) for key in want)


def test_state_round_trips_through_an_orbax_checkpoint(tmp_path):
    import orbax.checkpoint as ocp

    batches = _batches()
    for _ in range(3):
        next(batches)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "data"))
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.arange(3.0)}),
                                            data=ocp.args.JsonSave(batches.get_state())))
    manager.wait_until_finished()
    expected = [next(batches) for _ in range(4)]
    resumed = _batches()
    restored = manager.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore({"w": np.zeros(3)}),
                                                          data=ocp.args.JsonRestore()))
    resumed.set_state(restored["data"])
    assert restored["state"]["w"].tolist() == [0.0, 1.0, 2.0]
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[key], want[key]) for key in want)


def _rows(batch):
    return sorted(tuple(r) for r, m in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()) if any(m))


def test_shards_are_disjoint_and_cover_the_data():
    seen = [_first_ids(_batches(batch_size=2, shard_index=i, shard_count=3, num_epochs=1)) for i in range(3)]
    assert sorted(sum(seen, [])) == list(range(37))
    counts = [len(list(_batches(batch_size=2, shard_index=i, shard_count=3, num_epochs=1))) for i in range(3)]
    assert counts == [7, 7, 7]  # padded to whole global batches: no process waits for another


def test_union_of_process_batches_is_the_single_process_batch():
    single = _batches(batch_size=4)
    shards = [_batches(batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
    for _ in range(15):  # crosses an epoch boundary
        want = _rows(next(single))
        got = sorted(_rows(next(shards[0])) + _rows(next(shards[1])))
        assert got == want


def test_resume_on_a_different_process_count():
    single = _batches(batch_size=4)
    expected = [_rows(next(single)) for _ in range(12)]
    shards = [_batches(batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
    for _ in range(5):
        for s in shards:
            next(s)
    state = json.loads(json.dumps(shards[0].get_state()))
    assert state["global_batches"] == 5
    resumed = _batches(batch_size=4)
    resumed.set_state(state)
    assert [_rows(next(resumed)) for _ in range(7)] == expected[5:]


def test_packed_state_refuses_another_process_count():
    shards = [_batches(batch_size=2, shard_index=i, shard_count=2, packing=True) for i in range(2)]
    next(shards[0])
    with pytest.raises(DataError, match="saved by 2 processes"):
        _batches(packing=True).set_state(shards[0].get_state())


def test_fixed_shape_fields_are_padded_and_batched():
    from jaxft.data import Field

    def example(record):
        n = record["n"]
        return {"input_ids": np.arange(1, n % 3 + 2), "label": n % 2, "prefix": np.full(n % 4, n)}

    fields = {"input_ids": Field(), "label": Field(shape=()), "prefix": Field(shape=(3,), pad=-1)}
    batches = list(make_batches(RECORDS[:5], example_fn=example, batch_size=2, seq_len=4, fields=fields,
                                shuffle=False, num_epochs=1, shard_index=0, shard_count=1))
    assert len(batches) == 3 and sorted(batches[0]) == sorted(["input_ids", "label", "prefix", "attention_mask",
                                                                "segment_ids", "positions"])
    assert batches[0]["label"].tolist() == [0, 1] and batches[1]["label"].tolist() == [0, 1]
    assert batches[1]["prefix"].tolist() == [[2, 2, -1], [3, 3, 3]]
    assert batches[2]["prefix"].tolist() == [[-1, -1, -1], [-1, -1, -1]]  # 4 % 4 = 0 entries, then an empty row
    assert batches[2]["attention_mask"].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(DataError, match="declared at most"):
        list(make_batches(RECORDS[:5], example_fn=lambda r: {"input_ids": [1, 2], "label": 0,
                                                             "prefix": np.zeros(5)},
                          batch_size=2, seq_len=4, fields=fields, shard_index=0, shard_count=1, num_epochs=1))
    with pytest.raises(ValueError, match="packing needs per-token fields only"):
        make_batches(RECORDS, example_fn=example, batch_size=2, seq_len=4, fields=fields, packing=True)


def test_order_is_seeded_and_reshuffled_each_epoch():
    two_epochs = _first_ids(_batches(num_epochs=2))
    assert two_epochs == _first_ids(_batches(num_epochs=2))
    assert two_epochs[:37] != two_epochs[37:]
    assert sorted(two_epochs[:37]) == sorted(two_epochs[37:]) == list(range(37))
    assert _first_ids(_batches(num_epochs=1, seed=6)) != two_epochs[:37]
    assert _first_ids(_batches(num_epochs=1, shuffle=False)) == list(range(37))


def test_padded_batches_have_fixed_shape_and_exact_rows():
    batches = list(_batches(num_epochs=1, shuffle=False))
    assert len(batches) == 10 and all(b["input_ids"].shape == (4, 8) for b in batches)
    first = batches[0]
    assert first["input_ids"][2].tolist() == [2000, 2001, 2002, 0, 0, 0, 0, 0]
    assert first["attention_mask"][2].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert first["loss_mask"][2].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    assert first["positions"][2].tolist() == [0, 1, 2, 0, 0, 0, 0, 0]
    last = batches[-1]  # 37 = 9 * 4 + 1: one real row, three empty ones
    assert last["attention_mask"].sum(axis=1).tolist() == [36 % 6 + 1, 0, 0, 0]


def test_packing_keeps_every_token_exactly_once():
    batches = list(_batches(num_epochs=1, packing=True))
    tokens = Counter()
    for b in batches:
        assert b["input_ids"].shape == (4, 8)
        real = b["attention_mask"] == 1
        tokens.update(b["input_ids"][real].tolist())
        assert np.array_equal(real, b["segment_ids"] > 0)
        starts = real & (b["positions"] == 0)
        assert not (b["loss_mask"] * starts).any()  # no loss crosses into a new example
        # inside a segment positions count up and token values continue the same record
        same = (b["segment_ids"][:, 1:] == b["segment_ids"][:, :-1]) & real[:, 1:]
        assert np.array_equal((b["positions"][:, 1:] - b["positions"][:, :-1])[same], np.ones(same.sum()))
        assert np.array_equal((b["input_ids"][:, 1:] - b["input_ids"][:, :-1])[same], np.ones(same.sum()))
    expected = Counter(t for r in RECORDS for t in _example(r)["input_ids"].tolist())
    assert tokens == expected
    assert len(batches) < len(list(_batches(num_epochs=1)))  # packing needs fewer rows than padding


def test_lm_examples_through_the_pipeline(byte_tok):
    records = [{"prompt": "Q: ", "response": "yes"}, {"prompt": "Q: ", "response": "a longer answer"}]
    fn = lm_example_fn(byte_tok, 8, text_column="response", prompt_column="prompt", overflow="chunk")
    batch = next(_batches_of(records, fn))
    assert batch["input_ids"][0].tolist() == [1, *_ids(byte_tok, "Q: yes"), 2]
    assert batch["loss_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch["input_ids"][1].tolist() == [1, *_ids(byte_tok, "Q: a lo")]
    assert batch["loss_mask"][1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch["input_ids"][2].tolist() == _ids(byte_tok, "onger an")  # windows overlap by one token
    assert batch["loss_mask"][2].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert batch["input_ids"][3].tolist() == [*_ids(byte_tok, "nswer"), 2, 0, 0]
    assert batch["loss_mask"][3].tolist() == [0, 1, 1, 1, 1, 1, 0, 0]


def _batches_of(records, fn):
    return make_batches(records, example_fn=fn, batch_size=4, seq_len=8, shuffle=False, num_epochs=1,
                        shard_index=0, shard_count=1)


def test_over_long_examples_name_the_record(tmp_path, byte_tok):
    fn = lambda r: {"input_ids": np.arange(9 if r["n"] == 3 else 2)}  # noqa: E731
    with pytest.raises(DataError, match="record 3: 9 tokens, more than seq_len=8"):
        list(_batches_of(RECORDS[:5], fn))
    path = _write(tmp_path / "t.jsonl", '{"text": "short"}\n\n{"text": "far too long"}\n{"text": "ok"}\n')
    train, _ = split_records(read_records(path), 0.3, seed=0)
    assert train.origins == [f"{path}:1", f"{path}:3"]
    with pytest.raises(DataError) as err:
        list(_batches_of(train, lm_example_fn(byte_tok, 8, overflow="error")))
    assert str(err.value) == f"{path}:3: 14 tokens, more than max_len=8"


# ---- demo corpus and tokenizers ----------------------------------------------------------------


def test_demo_corpus_is_deterministic_prose(tmp_path, monkeypatch):
    from jaxft.data import corpus

    paragraphs = demo_corpus()
    fresh = demo_corpus(cache_dir=tmp_path)  # collected again, not read from the shared cache
    assert fresh == paragraphs
    assert sum(map(len, paragraphs)) > 300_000 and len(set(paragraphs)) == len(paragraphs)
    assert not any(">>>" in p or "\n" in p for p in paragraphs)
    assert all(p.isascii() and p.endswith(".") and corpus.MIN_PARAGRAPH_CHARS <= len(p) <= corpus.MAX_PARAGRAPH_CHARS
               for p in paragraphs)
    head = demo_corpus(min_chars=10_000)
    assert head == paragraphs[:len(head)] and sum(map(len, head[:-1])) < 10_000 <= sum(map(len, head))
    monkeypatch.setattr(corpus, "_collect_in_child", lambda: pytest.fail("the cached corpus was not reused"))
    assert demo_corpus(cache_dir=tmp_path) == paragraphs


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_demo_tokenizer_trains_once_and_round_trips(kind, monkeypatch):
    tok = demo_tokenization.demo_tokenizer(kind, 1000)
    assert len(tok) == 1000
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    paragraphs = demo_corpus()[:300]
    encoded = tok(paragraphs, add_special_tokens=False)["input_ids"]
    assert tok.batch_decode(encoded) == paragraphs
    assert sum(map(len, encoded)) < sum(map(len, paragraphs)) / 2.5  # it learnt subwords
    with_bos = tok("Hello")["input_ids"]
    assert with_bos[0] == 1 and tok.decode(with_bos, skip_special_tokens=True) == "Hello"
    monkeypatch.setattr(demo_tokenization, "_train", lambda *a: pytest.fail("the cached tokenizer was not reused"))
    again = demo_tokenization.demo_tokenizer(kind, 1000)
    assert again.get_vocab() == tok.get_vocab()


def test_demo_tokenizers_have_different_vocabularies(byte_tok):
    bpe = demo_tokenization.demo_tokenizer("bpe", 1000)
    unigram = demo_tokenization.demo_tokenizer("unigram", 1000)
    assert set(bpe.get_vocab()) != set(unigram.get_vocab())
    assert len(byte_tok) == 259
    text = "naïve café ✓"
    assert byte_tok.decode(byte_tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(byte_tok(text, add_special_tokens=False)["input_ids"]) == len(text.encode())
    with pytest.raises(ValueError, match="fixed vocabulary"):
        demo_tokenization.demo_tokenizer("byte", 512)


def test_invalid_utf8_rows_are_named_or_skipped(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "bad \xff byte"}\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: .*not valid UTF-8"):
        read_records(jsonl)
    kept = read_records(jsonl, on_error="skip")
    assert [r["text"] for r in kept] == ["ok", "fine"] and kept.summary.skipped == 1
    table = tmp_path / "t.csv"
    table.write_bytes(b'text,label\nok,1\n"bad \xfe",2\nfine,3\n')
    assert [r["text"] for r in read_records(table, on_error="skip")] == ["ok", "fine"]
    with pytest.raises(DataError, match=r"t\.csv:3: .*not valid UTF-8"):
        read_records(table)
    whole = tmp_path / "t.txt"
    whole.write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"t\.txt:2: not valid UTF-8"):
        read_records(whole, on_error="skip")  # one record per file: nothing smaller to skip
