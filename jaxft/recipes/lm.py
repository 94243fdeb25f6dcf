"""Causal-LM LoRA (or full) fine-tuning of any supported checkpoint on text.

The simplest recipe and the template for the others: a frozen base (optionally
quantized) plus a LoRA tree, next-token loss on a text/JSONL/CSV file, a HF
dataset, or -- in the demo -- prose assembled from Python's own docstrings.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.checkpoint.hf import load_pretrained, save_pretrained
from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward, lm_head_weight
from jaxft.models.init import init_params
from jaxft.recipes.base import TrainTask
from jaxft.train.loss import causal_lm_loss, next_token_targets

log = logging.getLogger("jaxft")


def load_model(model_cfg, seed: int) -> tuple[DecoderConfig, dict, Any]:
    """(cfg, params, tokenizer) from ``config.model``: a checkpoint path/hub id/GGUF, or a
    config dict with random weights (``model.path`` empty) and a demo tokenizer."""
    dtype = jnp.dtype(model_cfg.dtype)
    if model_cfg.path:
        from jaxft.tokenization import load_tokenizer

        cfg, params = load_pretrained(model_cfg.path, dtype=dtype)
        tokenizer = load_tokenizer(model_cfg.get("tokenizer") or model_cfg.path)
        return cfg, params, tokenizer
    from jaxft.tokenization.demo import demo_tokenizer

    tokenizer = demo_tokenizer(model_cfg.demo_tokenizer, vocab_size=int(model_cfg.demo_vocab_size))
    hf = dict(model_cfg.random_init.to_dict())
    hf.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    cfg = DecoderConfig.from_hf(hf, source="config.model.random_init")
    return cfg, init_params(cfg, jax.random.PRNGKey(seed), dtype), tokenizer


def load_texts(data_cfg) -> list[str]:
    from jaxft.data import load_hf_dataset, read_records
    from jaxft.data.corpus import demo_corpus

    column = data_cfg.text_column
    if data_cfg.path:
        records = read_records(data_cfg.path, columns=(column,), on_error=data_cfg.on_error)
    elif data_cfg.hf_dataset:
        records = load_hf_dataset(data_cfg.hf_dataset, data_cfg.hf_split, (column,))
    else:
        return demo_corpus()
    summary = getattr(records, "summary", None)
    if summary is not None:
        log.info("data: %s", summary)  # includes the count of skipped bad records
    return [r[column] for r in records]


def build(config, mesh) -> TrainTask:
    from jaxft.data import make_batches, split_records
    from jaxft.data.lm import text_chunks

    cfg, params, tokenizer = load_model(config.model, config.seed)
    if config.model.quantize != "none":
        params = lora_lib.quantize(params, cfg, fmt=config.model.quantize)
    compute_dtype = jnp.dtype(config.model.compute_dtype)
    lcfg = config.lora
    full_finetune = int(lcfg.rank) == 0
    if full_finetune:
        trainable, frozen, lora_config = {"model": params}, {}, None
    else:
        adapters = lora_lib.init(jax.random.PRNGKey(config.seed + 1), cfg, params, rank=int(lcfg.rank),
                                 alpha=float(lcfg.alpha), targets=tuple(lcfg.targets), dropout=float(lcfg.dropout),
                                 use_rslora=bool(lcfg.rslora))
        trainable, frozen, lora_config = {"lora": adapters.params}, {"base": params}, adapters.config

    def effective_params(trainable, frozen, rng):
        if full_finetune:
            return trainable["model"]
        return lora_lib.apply(frozen["base"], lora_lib.LoRA(trainable["lora"], lora_config), rng=rng)

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
        trainable=trainable, frozen=frozen, loss_fn=loss_fn, train_batches=train_batches,
        eval_batches=eval_batches, samples_fn=samples_fn if config.sample.prompt else None, export_fn=export_fn,
        description=f"lm: {'full fine-tuning' if full_finetune else f'LoRA r={lcfg.rank}'} of {where} on {text}; "
                    f"{len(train)} train / {len(valid)} validation sequences of {seq_len} tokens",
        extras={"model_config": cfg, "lora_config": lora_config, "tokenizer": tokenizer},
    )
