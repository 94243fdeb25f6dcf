"""Causal-LM LoRA (or full) fine-tuning of any supported checkpoint on text.

The simplest recipe and the template for the others: a frozen base (optionally
quantized) plus a LoRA tree, next-token loss on a text/JSONL/CSV file, a HF
dataset, or -- in the demo -- prose assembled from Python's own docstrings.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.checkpoint.hf import save_pretrained
from jaxft.checkpoint.hf_names import is_norm_bias_or_embedding
from jaxft.loaders import load_model, load_records
from jaxft.lora.peft import base_model_of
from jaxft.models.decoder import forward, lm_head_weight
from jaxft.train.loss import causal_lm_loss, next_token_targets
from jaxft.train.task import TrainTask

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


def build(config, mesh) -> TrainTask:
    from jaxft.data import make_batches, split_records
    from jaxft.data.lm import text_chunks

    cfg, params, tokenizer = load_model(config.model, config.seed)
    compute_dtype = jnp.dtype(config.model.compute_dtype)
    lcfg = config.lora
    trainable, frozen, tuning = lora_lib.finetune_trees(jax.random.PRNGKey(config.seed + 1), cfg, params, lcfg)
    full_finetune, lora_config, effective_params = tuning.full, tuning.lora_config, tuning.params

    def loss_fn(trainable, frozen, batch, rng):
        p = effective_params(trainable, frozen, rng)
        hidden, _ = forward(cfg, p, batch["input_ids"], batch["attention_mask"], remat=config.model.remat,
                            output="hidden", dtype=compute_dtype)
        targets, mask = next_token_targets(batch["input_ids"], batch["loss_mask"])
        out = causal_lm_loss(hidden, lm_head_weight(cfg, p, compute_dtype), targets, mask,
                             chunk_size=int(config.loss.chunk_size) or None)
        return out.loss_sum, out.weight_sum, {"accuracy": out.correct, "accuracy_count": out.count}

    texts = load_texts(config.data)
    seq_len = int(config.data.seq_len)
    examples = [{"input_ids": ids} for ids in text_chunks(tokenizer, texts, seq_len)]
    if len(examples) < 2:
        raise ValueError(f"data: only {len(examples)} examples of {seq_len} tokens; need more text or a shorter "
                         f"data.seq_len")
    train, valid = split_records(examples, float(config.data.validation_fraction), int(config.seed))
    procs = jax.process_count()
    per_process = int(config.train.batch_size) // procs

    def as_example(record):
        ids = np.asarray(record["input_ids"], np.int32)
        return {"input_ids": ids, "loss_mask": np.ones_like(ids, np.int32)}

    batches = functools.partial(make_batches, example_fn=as_example, batch_size=per_process, seq_len=seq_len,
                                shard_index=jax.process_index(), shard_count=procs)
    train_batches = batches(train, seed=int(config.seed), shuffle=True, num_epochs=None)
    eval_batches = (lambda: batches(valid, seed=0, shuffle=False, num_epochs=1)) if valid else None

    def samples_fn(trainable, frozen):
        from jaxft.sampling import SamplingConfig, generate

        prompt = config.sample.prompt
        if not prompt:
            return {}
        ids = np.asarray([tokenizer(prompt)["input_ids"]], np.int32)
        sampling = SamplingConfig(max_new_tokens=int(config.sample.max_new_tokens), temperature=0.0,
                                  eos_token_ids=tuple(cfg.eos_token_ids), pad_token_id=cfg.pad_token_id or 0)
        out = generate(cfg, effective_params(trainable, frozen, None), ids, sampling)
        n = int(np.asarray(out.lengths)[0])
        return {"generation": prompt + tokenizer.decode(np.asarray(out.tokens)[0, :n], skip_special_tokens=True)}

    def export_fn(directory, trainable, frozen):
        directory = Path(directory)
        if full_finetune:
            save_pretrained(directory / "model", cfg, trainable["model"], tokenizer=tokenizer)
            return
        adapters = lora_lib.LoRA(trainable["lora"], lora_config)
        lora_lib.save_peft(directory / "adapter", cfg, adapters, base_model_name_or_path=config.model.path or None)
        if config.export.merged:  # a quantized base is dequantized to its original dtype
            merged = lora_lib.merge(cfg, jax.device_get(frozen["base"]), adapters)
            save_pretrained(directory / "merged", cfg, merged, tokenizer=tokenizer)

    where = config.model.path or "a randomly initialised model (config.model.random_init)"
    text = config.data.path or config.data.hf_dataset or "the offline demo corpus (Python's own docstrings)"
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=loss_fn, train_batches=train_batches, no_decay=no_decay,
        eval_batches=eval_batches, samples_fn=samples_fn if config.sample.prompt else None, export_fn=export_fn,
        description=f"lm: {'full fine-tuning' if full_finetune else f'LoRA r={lcfg.rank}'} of {where} on {text}; "
                    f"{len(train)} train / {len(valid)} validation sequences of {seq_len} tokens",
    )


def load_export(directory: str):
    """``(cfg, params, adapters or None)`` read back from an export: the merged (or fully tuned) model,
    or the adapter over its base model when no merged copy was written."""
    from jaxft.checkpoint.hf import load_pretrained

    directory = Path(directory)
    adapter = directory / "adapter"
    for name in ("merged", "model"):
        if (directory / name).is_dir():
            cfg, params = load_pretrained(directory / name)
            return cfg, params, lora_lib.load_peft(adapter, cfg) if adapter.is_dir() else None
    if adapter.is_dir():
        base = base_model_of(adapter)
        if base:
            cfg, params = load_pretrained(base)
            return cfg, params, lora_lib.load_peft(adapter, cfg)
    raise FileNotFoundError(f"{directory}: no merged/, model/ or adapter/ (with a base model) export to load")
