"""movielens: Yes/No SFT of a decoder LLM (LoRA, QLoRA or full) on prepared MovieLens records.

Training records come from ``data.dir`` (``train.json``/``eval.json`` written by ``prepare``), or,
when it is empty, from the generated demo data. The loss is next-token cross-entropy on the answer
and its end-of-turn marker; eval adds accuracy and F1 from the Yes/No logits at the answer position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxft.data.records import DataError
from jaxft.recipes.movielens import encoding, prompts
from jaxft.recipes.movielens.metrics import MultiMetricStop, yes_no_sums
from jaxft.recipes.movielens.scoring import yes_no_logits
from jaxft.train.lm import Finetuned, GlobalBatches, export_finetuned, load_finetuned, loss_only_sums, tune
from jaxft.train.task import TrainTask, data_fingerprint

log = logging.getLogger("jaxft")

COLUMNS = ("instruction", "input", "output", "system")
EXPORT_FILE = "movielens.json"


def data_dir(config) -> Path:
    """``data.dir`` checked, or the generated demo data when it is empty."""
    if config.data.dir:
        directory = Path(config.data.dir).expanduser()
        for name in ("train.json", "eval.json"):
            if not (directory / name).is_file():
                raise DataError(f"config key 'data.dir': {directory / name} not found (write it with "
                                "`python -m jaxft.recipes.movielens prepare`)")
        return directory
    from jaxft.recipes.movielens.demo import demo_data_dir

    return demo_data_dir(int(config.movielens.demo_history_len), int(config.movielens.demo_seed))


def model_section(config, directory: Path):
    """``config.model``, with the demo's own tokenizer when neither a model nor a tokenizer is named."""
    model_cfg = config.model.copy_and_resolve_references()
    if not model_cfg.path and not model_cfg.tokenizer:
        from jaxft.assets import cache_dir
        from jaxft.recipes.movielens.demo import train_demo_tokenizer

        vocab = int(config.movielens.demo_tokenizer_vocab)
        digest = hashlib.sha256((directory / "train.json").read_bytes() + (directory / "eval.json").read_bytes())
        target = cache_dir() / "movielens" / f"tokenizer-{digest.hexdigest()[:16]}-{vocab}"
        model_cfg.tokenizer = str(train_demo_tokenizer(directory, vocab, target))
    return model_cfg


def load_tokenizer(config, directory: Path):
    from jaxft.loaders import load_tokenizer_spec

    model_cfg = model_section(config, directory)
    tokenizer = load_tokenizer_spec(model_cfg.tokenizer, model_cfg.path)
    encoding.ensure_chat_template(tokenizer)
    return tokenizer


def _read(path: Path, on_error: str):
    from jaxft.data import read_records

    return read_records(path, columns=COLUMNS, on_error=on_error)


def _encode(name: str, path: Path, records, tokenizer, cutoff_len: int, cache: Path) -> encoding.EncodedSet:
    encoded, hit = encoding.encode_cached(name, path, records, tokenizer, cutoff_len, cache,
                                          origins=getattr(records, "origins", None))
    lost = int((encoded.answer_index < 0).sum())
    what = "reused the token cache" if hit else "tokenized and cached"
    log.info("%s: %s %s (%d records; %d over cutoff_len=%d, cut on the right%s)", name, what, cache, len(encoded),
             int(encoded.truncated.sum()), cutoff_len, f", {lost} of them lost their answer" if lost else "")
    return encoded


def build(config, placement) -> TrainTask:
    from jaxft.loaders import load_model

    ml = config.movielens
    directory = data_dir(config)
    model_cfg = model_section(config, directory)
    cfg, params, tokenizer = load_model(model_cfg, config.seed, placement=placement)
    encoding.ensure_chat_template(tokenizer)
    yes_id, no_id = encoding.answer_token_ids(tokenizer)
    data = movielens_data(config, directory, tokenizer)
    # A random base has no path to reload it from: the export keeps a copy (demo and test sizes only).
    random_base = None if model_cfg.path else jax.device_get(params)
    lm, trainable, frozen, _ = tune(config, cfg, params, tokenizer)

    def eval_fn(trainable, frozen, batch):
        p = lm.params(trainable, frozen)
        hidden = lm.hidden(p, batch)
        out = lm.scores(p, hidden, batch)
        yes, no = yes_no_logits(cfg, p, hidden, batch["answer_index"], yes_id, no_id, lm.dtype)
        sums = yes_no_sums(yes, no, batch["is_yes"], batch["has_answer"].astype(jnp.float32))
        return {"loss": out.loss_sum, "loss_count": out.weight_sum, **sums}

    settings = {
        "base_model": model_cfg.path or "base", "tuned": "model" if lm.full else "adapter",
        "yes_token_id": yes_id, "no_token_id": no_id, "cutoff_len": data.cutoff,
        "compute_dtype": str(model_cfg.compute_dtype), "dtype": str(model_cfg.dtype),
        "quantize": str(model_cfg.quantize), "double_quant": str(model_cfg.quantize) == "nf4" and bool(
            model_cfg.double_quant), "system_prompt": data.first["system"], "instruction": data.first["instruction"],
        "data_dir": str(directory),
    }

    def export_fn(export_dir, trainable, frozen):
        export_finetuned(export_dir, lm, trainable, frozen, source=model_cfg.path, tokenizer=tokenizer,
                         tokenizer_in=("model", "base", "tokenizer"), base=random_base, settings=settings,
                         settings_file=EXPORT_FILE)

    balance = lambda s: f"{int(s.is_yes.sum())} Yes / {int(len(s) - s.is_yes.sum())} No"  # noqa: E731
    where = model_cfg.path or f"a random {cfg.model_type} model (model.random_init)"
    description = (f"movielens: {'full fine-tuning' if lm.full else f'LoRA r={config.lora.rank}'}"
                   f"{' over an ' + str(model_cfg.quantize).upper() + ' base' if model_cfg.quantize != 'none' else ''}"
                   f" of {where} on {directory}: {len(data.train_set)} train ({balance(data.train_set)}), "
                   f"{data.eval_count} eval records; rows of {data.seq_len} tokens")
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=lm.loss_fn(loss_only_sums), train_batches=data.train_batches,
        eval_batches=data.eval_batches, eval_fn=eval_fn,
        stop_fn=MultiMetricStop(int(ml.patience), float(ml.min_delta), float(ml.min_delta)),
        samples_fn=_samples_fn(lm, tokenizer, data.samples), export_fn=export_fn, description=description,
        data_fingerprint=data_fingerprint(config.data), train_records=len(data.train_set),
    )


@dataclasses.dataclass
class MovielensData:
    cutoff: int
    first: dict  # the first training record (its system prompt and instruction go into the export)
    samples: list  # the first eval records, answered by generation in the logged samples
    train_set: encoding.EncodedSet
    eval_set: encoding.EncodedSet
    eval_count: int
    seq_len: int
    train_batches: Any
    eval_batches: Any


def movielens_data(config, directory: Path, tokenizer) -> MovielensData:
    """The prepared records, tokenized (through the token cache), and their batches."""
    from jaxft.assets import cache_dir
    from jaxft.data.pipeline import Field

    ml, data_cfg = config.movielens, config.data
    cutoff = int(data_cfg.cutoff_len)
    cache = Path(ml.cache_dir).expanduser() if ml.cache_dir else cache_dir() / "movielens" / "tokens"
    train_records = _read(directory / "train.json", data_cfg.on_error)
    eval_records = _read(directory / "eval.json", data_cfg.on_error)
    train_set = _encode("train", directory / "train.json", train_records, tokenizer, cutoff, cache)
    eval_set = _encode("eval", directory / "eval.json", eval_records, tokenizer, cutoff, cache)
    eval_count = min(int(data_cfg.max_eval_samples) or len(eval_set), len(eval_set))
    # Rows as long as the longest record (in steps of 32), not cutoff_len: less padding, one shape.
    seq_len = min(cutoff, int(-(-max(train_set.lengths().max(), eval_set.lengths().max()) // 32) * 32))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_fields = {"input_ids": Field(pad=pad_id), "loss_mask": Field()}
    eval_fields = {**token_fields, "answer_index": Field(shape=()), "is_yes": Field(shape=()),
                   "has_answer": Field(shape=())}

    def train_example(i):
        ex = train_set.example(i)
        return {"input_ids": ex["input_ids"], "loss_mask": ex["loss_mask"]}

    batches = GlobalBatches.of(config, seq_len=seq_len, pad_id=pad_id)
    return MovielensData(cutoff, train_records[0], list(eval_records[:SAMPLE_RECORDS]), train_set, eval_set,
                         eval_count, seq_len,
                         batches.train(range(len(train_set)), example_fn=train_example, fields=token_fields),
                         batches.eval(range(eval_count), example_fn=eval_set.example, fields=eval_fields))


SAMPLE_RECORDS = 2  # eval records answered by greedy generation at each eval (the logged samples)


def _samples_fn(lm, tokenizer, records: list):
    """The generated answers (greedy, 8 new tokens) to the first eval records, next to their labels: what
    ``infer`` would print for them, so a run shows whether its model answers in words, not only in logits."""
    from jaxft.recipes.movielens.infer import Decoding, generate_answers

    def samples_fn(trainable, frozen) -> dict[str, str]:
        texts = generate_answers(lm.cfg, lm.params(trainable, frozen), tokenizer, records,
                                 Decoding(max_new_tokens=8, greedy=True), batch_size=len(records))
        return {f"answer_{i}": f"{text!r} (label: {r['output']})" for i, (text, r) in enumerate(zip(texts, records))}

    return samples_fn if records else None


def load_export(directory: str, base_model: str | None = None) -> Finetuned:
    """Reload an export written by ``export_fn``; ``base_model`` replaces the recorded base (a local copy)."""
    loaded = load_finetuned(directory, base=base_model, settings_file=EXPORT_FILE,
                            missing="not found: not a movielens export directory",
                            required=("base_model", "tuned", "yes_token_id", "no_token_id", "cutoff_len"),
                            need_tokenizer=True)
    encoding.ensure_chat_template(loaded.tokenizer)
    return loaded


def base_params(loaded: Finetuned, base_model: str | None = None):
    """The untuned model next to the tuned one: the adapters' base, or the base a full fine-tuning started
    from (``base_model`` replaces the recorded one)."""
    from jaxft.checkpoint.hf import load_pretrained

    if loaded.adapters is not None:
        return loaded.params
    ref = base_model or loaded.settings["base_model"]
    path = loaded.directory / ref if (loaded.directory / ref).is_dir() else ref
    cfg, base = load_pretrained(path, dtype=jnp.dtype(loaded.settings.get("dtype", "float32")))
    if cfg.vocab_size != loaded.cfg.vocab_size or cfg.num_hidden_layers != loaded.cfg.num_hidden_layers:
        raise ValueError(f"{loaded.directory / 'model'}: its shape does not match the base model {path}")
    return base


__all__ = ["build", "load_export", "base_params", "data_dir", "load_tokenizer", "prompts"]
