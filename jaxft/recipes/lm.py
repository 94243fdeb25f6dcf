"""Causal-LM LoRA (or full) fine-tuning of any supported checkpoint on text.

The simplest recipe and the template for the others: a frozen base (optionally
quantized) plus a LoRA tree, next-token loss on a text/JSONL/CSV file, a HF
dataset, or -- in the demo -- prose assembled from Python's own docstrings.
"""

from __future__ import annotations

import logging

import numpy as np

from jaxft.checkpoint.hf_names import is_norm_bias_or_embedding
from jaxft.loaders import load_records
from jaxft.train.lm import Finetuned, GlobalBatches, export_finetuned, load_finetuned, load_lm
from jaxft.train.task import TrainTask, data_fingerprint

log = logging.getLogger("jaxft")


def load_texts(data_cfg) -> list[str]:
    """The configured records' text column, or the offline demo corpus when no data is configured."""
    from jaxft.data.corpus import demo_corpus

    records = load_records(data_cfg)
    if records is None:
        return demo_corpus()[: int(data_cfg.max_records) or None]
    return [r[data_cfg.text_column] for r in records]


def no_decay(path: tuple[str, ...], leaf) -> bool:
    """Full fine-tuning: norm scales, biases and embeddings get no weight decay; LoRA factors all do."""
    return path[0] == "model" and is_norm_bias_or_embedding(path)


def build(config, placement) -> TrainTask:
    from jaxft.data import split_records
    from jaxft.data.lm import text_chunks

    lm, trainable, frozen, tokenizer = load_lm(config, placement=placement)
    texts = load_texts(config.data)
    seq_len = int(config.data.seq_len)
    examples = [{"input_ids": ids} for ids in text_chunks(tokenizer, texts, seq_len)]
    if len(examples) < 2:
        raise ValueError(f"data: only {len(examples)} examples of {seq_len} tokens; need more text or a shorter "
                         f"data.seq_len")
    train, valid = split_records(examples, float(config.data.validation_fraction), int(config.seed))
    batches = GlobalBatches.of(config, example_fn=as_example, seq_len=seq_len)

    def samples_fn(trainable, frozen):
        from jaxft.sampling import SamplingConfig, generate

        prompt = config.sample.prompt
        ids = np.asarray([tokenizer(prompt)["input_ids"]], np.int32)
        sampling = SamplingConfig(max_new_tokens=int(config.sample.max_new_tokens), temperature=0.0,
                                  eos_token_ids=tuple(lm.cfg.eos_token_ids), pad_token_id=lm.cfg.pad_token_id or 0)
        out = generate(lm.cfg, lm.params(trainable, frozen), ids, sampling)
        n = int(np.asarray(out.lengths)[0])
        return {"generation": prompt + tokenizer.decode(np.asarray(out.tokens)[0, :n], skip_special_tokens=True)}

    def export_fn(directory, trainable, frozen):
        # a quantized base is dequantized to its original dtype in merged/
        export_finetuned(directory, lm, trainable, frozen, source=config.model.path, tokenizer=tokenizer,
                         merged=bool(config.export.merged))

    where = config.model.path or "a randomly initialised model (config.model.random_init)"
    text = config.data.path or config.data.hf_dataset or "the offline demo corpus (Python's own docstrings)"
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=lm.loss_fn(), train_batches=batches.train(train),
        no_decay=no_decay, eval_batches=batches.eval(valid), export_fn=export_fn,
        samples_fn=samples_fn if config.sample.prompt else None, data_fingerprint=data_fingerprint(config.data),
        description=f"lm: {'full fine-tuning' if lm.full else f'LoRA r={config.lora.rank}'} of {where} on {text}; "
                    f"{len(train)} train / {len(valid)} validation sequences of {seq_len} tokens",
    )


def as_example(record) -> dict[str, np.ndarray]:
    ids = np.asarray(record["input_ids"], np.int32)
    return {"input_ids": ids, "loss_mask": np.ones_like(ids, np.int32)}


def load_export(directory: str) -> Finetuned:
    """The tuned model of an export: the merged (or fully tuned) model, or the adapter over its base
    model when no merged copy was written."""
    return load_finetuned(directory, merged_first=True)
