"""Prompt layout, loss mask, truncation counts, demo pairs, and ROUGE against rouge-score directly."""

import json

import numpy as np
import pytest
from rouge_score import rouge_scorer

from jaxft.data.records import RecordList
from jaxft.recipes.summarize.data import (PROMPT_PREFIX, TARGET_MARKER, SummaryEncoder, TruncationCounts,
                                          docstring_pairs, prompt_text, seeded_subset)
from jaxft.recipes.summarize.evaluation import rouge_scores, write_results
from jaxft.tokenization.demo import demo_tokenizer


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer("byte")  # one token per byte: lengths are easy to reason about


class SlowView:
    """The same tokenizer seen as a slow one (no offsets): the decode path of the truncation."""

    is_fast = False

    def __init__(self, inner):
        self._inner = inner

    def __call__(self, *args, **kwargs):
        kwargs.pop("return_offsets_mapping", None)
        return self._inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_prompt_text():
    assert prompt_text("Doc.") == "Summarize: Doc. \nTarget:"
    assert PROMPT_PREFIX == "Summarize: " and TARGET_MARKER == "\nTarget:"


def test_example_layout_and_mask(tok):
    enc = SummaryEncoder(tok, max_input_length=100, max_target_length=100)
    (ex,), counts = enc.encode([("A short document.", "Short.")])
    ids, mask = ex["input_ids"], ex["loss_mask"]
    assert ids.dtype == np.int32 and mask.dtype == np.int8
    prompt = [tok.bos_token_id] + tok("Summarize: A short document. \nTarget:", add_special_tokens=False)["input_ids"]
    summary = tok("Short.", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == prompt + summary + [tok.eos_token_id]
    assert mask.tolist() == [0] * len(prompt) + [1] * (len(summary) + 1)  # summary and EOS carry the loss
    assert counts == TruncationCounts(examples=1, documents=0, summaries=0)
    (prompt_ids,), cut = enc.prompt_ids(["A short document."])
    assert prompt_ids == prompt and cut == [False]


@pytest.mark.parametrize("slow", [False, True])
def test_truncation_cuts_document_and_summary_never_markers(tok, slow):
    t = SlowView(tok) if slow else tok
    enc = SummaryEncoder(t, max_input_length=10, max_target_length=4)
    pairs = [("0123456789abcdef", "WXYZ"), ("short", "LONGER SUMMARY"), ("exactly 10", "ok")]
    examples, counts = enc.encode(pairs, origins=["a:1", "a:2", "a:3"])
    assert counts == TruncationCounts(examples=3, documents=1, summaries=1)
    assert str(counts) == ("1 of 3 documents truncated to max_input_length, "
                           "1 summaries truncated to max_target_length")
    texts = [tok.decode(e["input_ids"], skip_special_tokens=True) for e in examples]
    assert texts == ["Summarize: 0123456789 \nTarget:WXYZ", "Summarize: short \nTarget:LONG",
                     "Summarize: exactly 10 \nTarget:ok"]
    # summary tokens + EOS; the cut summary ("LONG") gets no EOS: stopping there would be stopping mid-sentence
    assert [int(e["loss_mask"].sum()) for e in examples] == [5, 4, 3]
    assert [int(e["input_ids"][-1] == tok.eos_token_id) for e in examples] == [1, 0, 1]
    kept, cut = enc.truncate_documents(["0123456789abcdef"])
    assert kept == ["0123456789"] and cut == [True]
    again, counts_again = enc.encode(pairs, chunk=2)  # tokenized two pairs at a time: the same
    assert counts_again == counts
    assert all((a["input_ids"] == b["input_ids"]).all() and (a["loss_mask"] == b["loss_mask"]).all()
               for a, b in zip(examples, again))


def test_truncation_with_a_bpe_tokenizer_keeps_whole_tokens():
    tok = demo_tokenizer("bpe", vocab_size=1024)
    doc = "Return the number of items in the container, counting duplicates only once per key."
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    enc = SummaryEncoder(tok, max_input_length=5, max_target_length=8)
    kept, cut = enc.truncate_documents([doc])
    assert cut == [True] and doc.startswith(kept[0])
    assert tok(kept[0], add_special_tokens=False)["input_ids"] == ids[:5]


def test_empty_summary_is_named(tok):
    from jaxft.data.records import DataError

    class NoTokens(SlowView):
        def __call__(self, texts, **kwargs):
            out = self._inner(texts, **kwargs)
            if texts == ["x"]:
                out["input_ids"] = [[]]
            return out

    with pytest.raises(DataError, match=r"^data.jsonl:7: the summary encodes to no tokens$"):
        SummaryEncoder(NoTokens(tok), 10, 10).encode([("doc", "x")], origins=["data.jsonl:7"])


def test_docstring_pairs():
    pairs = docstring_pairs([
        "Return the sum of the values. The values must be numbers, e.g. Int or float. Nothing else works.",
        "A single sentence has no body to summarise.",
        "Open the file (see open()). Then read it.",
    ])
    assert pairs == [
        {"document": "The values must be numbers, e.g. Int or float. Nothing else works.",
         "summary": "Return the sum of the values."},
        {"document": "Then read it.", "summary": "Open the file (see open())."},
    ]


def test_rouge_matches_rouge_score():
    predictions = ["the cats were running in the garden", "a totally different sentence", "stocks fell sharply"]
    references = ["cats run in a garden", "nothing in common here", "stocks fell sharply today"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references)]
    got = rouge_scores(predictions, references)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert got[name] == pytest.approx(np.mean([d[name].fmeasure for d in direct]), abs=1e-12)
    # stemming is on: "running cats" matches "run cat"
    assert rouge_scores(["running cats"], ["run cat"])["rouge1"] == pytest.approx(1.0)
    assert rouge_scores(["x y"], ["x y"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_write_results(tmp_path):
    path = write_results(tmp_path / "run" / "evaluation_results.json", {"rouge1": 0.5, "samples": []})
    assert json.loads(path.read_text()) == {"rouge1": 0.5, "samples": []}


def test_seeded_subset_is_drawn_from_the_whole_set_in_order():
    records = RecordList([{"i": i} for i in range(1000)], origins=[f"f:{i + 1}" for i in range(1000)])
    chosen = seeded_subset(records, 200, seed=0)
    ids = [r["i"] for r in chosen]
    assert len(ids) == 200 and ids == sorted(ids) and max(ids) > 900 and ids != list(range(200))
    assert chosen.origins == [f"f:{i + 1}" for i in ids]
    assert [r["i"] for r in seeded_subset(records, 200, seed=0)] == ids  # the same at every eval
    assert len(seeded_subset(records, 5000, seed=0)) == 1000


def test_epochs_count_the_pairs_read():
    from tests.configs import recipe_config
    from jaxft.settings import parse_settings

    config = recipe_config("summarize", "seed")
    assert config.train.epochs == 3.0  # summarize.epochs is train.epochs
    assert parse_settings(config).with_train_records(287_113).train.steps == 215_335  # 3 epochs of cnn_dailymail
    config.summarize.epochs = 0.01
    assert parse_settings(config).with_train_records(10).train.steps == 1


def test_docstring_pairs_with_the_whole_paragraph():
    paragraph = "Return the sum of the values. The values must be numbers. Nothing else works."
    pairs = docstring_pairs([paragraph, "One sentence."], document="paragraph")
    assert pairs == [{"document": paragraph, "summary": "Return the sum of the values."}]
    with pytest.raises(ValueError, match="summarize.demo_document"):
        docstring_pairs([paragraph], document="lead")
