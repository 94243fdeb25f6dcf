"""Data layer: read records, turn them into causal-LM examples, batch them with grain.

Typical use::

    records = read_records("train.jsonl", columns=("prompt", "response"), on_error="skip")
    log(records.summary)
    train, val = split_records(records, validation_fraction=0.05, seed=0)
    example_fn = lm_example_fn(tokenizer, 1024, text_column="response", prompt_column="prompt")
    batches = make_batches(train, example_fn=example_fn, batch_size=8, seq_len=1024, seed=0, packing=True)
"""

from jaxft.data.corpus import demo_corpus
from jaxft.data.hf_datasets import load_hf_dataset
from jaxft.data.lm import lm_example, lm_example_fn, text_chunks
from jaxft.data.pipeline import Batches, Field, make_batches, token_fields
from jaxft.data.records import DataError, ReadSummary, RecordList, read_records, split_records

__all__ = [
    "Batches", "DataError", "Field", "token_fields", "ReadSummary", "RecordList", "demo_corpus", "lm_example",
    "lm_example_fn",
    "load_hf_dataset", "make_batches", "read_records", "split_records", "text_chunks",
]
