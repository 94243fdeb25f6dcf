"""movielens: Yes/No SFT of a decoder LLM (LoRA, QLoRA or full) on prepared MovieLens records.

Training records come from ``data.dir`` (``train.json``/``eval.json`` written by ``prepare``), or,
when it is empty, from the generated demo data. The loss is next-token cross-entropy on the answer
and its end-of-turn marker; eval adds accuracy and F1 from the Yes/No logits at the answer position.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.data.records import DataError
from jaxft.recipes.movielens import encoding, prompts
from jaxft.recipes.movielens.metrics import MultiMetricStop, yes_no_sums
from jaxft.recipes.movielens.scoring import yes_no_logits
from jaxft.train.task import TrainTask

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


def _apply_epochs(config, train_count: int) -> None:
    """``movielens.epochs`` > 0 sets ``train.steps`` from the data, and the warmup from its ratio
    (the engine counts steps; the reference counted epochs)."""
    ml = config.movielens
    if float(ml.epochs) > 0:
        steps = max(1, math.ceil(float(ml.epochs) * train_count / int(config.train.batch_size)))
        config.train.steps = steps
        log.info("movielens.epochs=%s over %d records at batch %d: train.steps=%d", ml.epochs, train_count,
                 int(config.train.batch_size), steps)
    if float(ml.warmup_ratio) > 0:
        config.optim.schedule.warmup_steps = math.ceil(float(ml.warmup_ratio) * int(config.train.steps))


def build(config, mesh) -> TrainTask:
    from jaxft.assets import cache_dir
    from jaxft.data import make_batches
    from jaxft.data.pipeline import Field
    from jaxft.loaders import load_model
    from jaxft.models.decoder import forward, lm_head_weight
    from jaxft.train.loss import causal_lm_loss, next_token_targets

    ml, data_cfg = config.movielens, config.data
    directory = data_dir(config)
    model_cfg = model_section(config, directory)
    double_quant = str(model_cfg.quantize) == "nf4" and bool(model_cfg.double_quant)
    loaded = load_model(model_cfg, config.seed)
    cfg, params, tokenizer = loaded.cfg, loaded.params, loaded.tokenizer
    encoding.ensure_chat_template(tokenizer)
    yes_id, no_id = encoding.answer_token_ids(tokenizer)
    compute_dtype = jnp.dtype(model_cfg.compute_dtype)

    cutoff = int(data_cfg.cutoff_len)
    cache = Path(ml.cache_dir).expanduser() if ml.cache_dir else cache_dir() / "movielens" / "tokens"
    train_records = _read(directory / "train.json", data_cfg.on_error)
    eval_records = _read(directory / "eval.json", data_cfg.on_error)
    train_set = _encode("train", directory / "train.json", train_records, tokenizer, cutoff, cache)
    eval_set = _encode("eval", directory / "eval.json", eval_records, tokenizer, cutoff, cache)
    limit = int(data_cfg.max_eval_samples) or len(eval_set)
    eval_count = min(limit, len(eval_set))
    _apply_epochs(config, len(train_set))

    rank = int(config.lora.rank)
    full = rank == 0
    # A random base has no path to reload it from: the export keeps a copy (demo and test sizes only).
    random_base = None if model_cfg.path else jax.device_get(params)
    if full:
        trainable, frozen, lora_config = {"model": params}, {}, None
    else:
        adapters = lora_lib.init(jax.random.PRNGKey(config.seed + 1), cfg, params, rank=rank,
                                 alpha=float(config.lora.alpha), targets=tuple(config.lora.targets),
                                 dropout=float(config.lora.dropout), use_rslora=bool(config.lora.rslora))
        trainable, frozen, lora_config = {"lora": adapters.params}, {"base": params}, adapters.config

    def effective(trainable, frozen, rng):
        if full:
            return trainable["model"]
        return lora_lib.apply(frozen["base"], lora_lib.LoRA(trainable["lora"], lora_config), rng=rng)

    def hidden_of(p, batch):
        hidden, _ = forward(cfg, p, batch["input_ids"], batch["attention_mask"], remat=model_cfg.remat,
                            output="hidden", dtype=compute_dtype)
        return hidden

    def lm_loss(p, hidden, batch):
        targets, mask = next_token_targets(batch["input_ids"], batch["loss_mask"])
        return causal_lm_loss(hidden, lm_head_weight(cfg, p, compute_dtype), targets, mask,
                              chunk_size=int(config.loss.chunk_size) or None)

    def loss_fn(trainable, frozen, batch, rng):
        p = effective(trainable, frozen, rng)
        out = lm_loss(p, hidden_of(p, batch), batch)
        return out.loss_sum, out.weight_sum, {}

    def eval_fn(trainable, frozen, batch):
        p = effective(trainable, frozen, None)
        hidden = hidden_of(p, batch)
        out = lm_loss(p, hidden, batch)
        yes, no = yes_no_logits(cfg, p, hidden, batch["answer_index"], yes_id, no_id, compute_dtype)
        sums = yes_no_sums(yes, no, batch["is_yes"], batch["has_answer"].astype(jnp.float32))
        return {"loss": out.loss_sum, "loss_count": out.weight_sum, **sums}

    # Rows as long as the longest record (in steps of 32), not cutoff_len: less padding, one shape.
    seq_len = min(cutoff, int(-(-max(train_set.lengths().max(), eval_set.lengths().max()) // 32) * 32))
    procs = jax.process_count()
    per_process = int(config.train.batch_size) // procs
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_fields = {"input_ids": Field(pad=pad_id), "loss_mask": Field()}
    eval_fields = {**token_fields, "answer_index": Field(shape=()), "is_yes": Field(shape=()),
                   "has_answer": Field(shape=())}

    def train_example(i):
        ex = train_set.example(i)
        return {"input_ids": ex["input_ids"], "loss_mask": ex["loss_mask"]}

    train_batches = make_batches(range(len(train_set)), example_fn=train_example, batch_size=per_process,
                                 seq_len=seq_len, fields=token_fields, seed=int(config.seed), shuffle=True,
                                 num_epochs=None, pad_id=pad_id)

    def eval_batches():
        return make_batches(range(eval_count), example_fn=eval_set.example, batch_size=per_process,
                            seq_len=seq_len, fields=eval_fields, seed=0, shuffle=False, num_epochs=1, pad_id=pad_id)

    settings = {
        "base_model": model_cfg.path or "base", "tuned": "model" if full else "adapter",
        "yes_token_id": yes_id, "no_token_id": no_id, "cutoff_len": cutoff,
        "compute_dtype": str(model_cfg.compute_dtype), "dtype": str(model_cfg.dtype),
        "quantize": str(model_cfg.quantize), "double_quant": double_quant, "system_prompt": train_records[0]["system"],
        "instruction": train_records[0]["instruction"], "data_dir": str(directory),
    }

    def export_fn(export_dir, trainable, frozen):
        from jaxft.checkpoint.hf import save_pretrained

        export_dir = Path(export_dir)
        if full:
            save_pretrained(export_dir / "model", cfg, trainable["model"], tokenizer=tokenizer)
        else:
            lora_lib.save_peft(export_dir / "adapter", cfg, lora_lib.LoRA(trainable["lora"], lora_config),
                               base_model_name_or_path=model_cfg.path or None)
        if random_base is not None:
            save_pretrained(export_dir / "base", cfg, random_base, tokenizer=tokenizer)
        tok_dir = export_dir / "tokenizer"
        shutil.rmtree(tok_dir, ignore_errors=True)
        tokenizer.save_pretrained(str(tok_dir))
        (export_dir / EXPORT_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    balance = lambda s: f"{int(s.is_yes.sum())} Yes / {int(len(s) - s.is_yes.sum())} No"  # noqa: E731
    where = model_cfg.path or f"a random {cfg.model_type} model (model.random_init)"
    description = (f"movielens: {'full fine-tuning' if full else f'LoRA r={rank}'}"
                   f"{' over an ' + str(model_cfg.quantize).upper() + ' base' if model_cfg.quantize != 'none' else ''}"
                   f" of {where} on {directory}: {len(train_set)} train ({balance(train_set)}), {eval_count} eval "
                   f"records; rows of {seq_len} tokens; train.steps={int(config.train.steps)}")
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=loss_fn, train_batches=train_batches,
        eval_batches=eval_batches, eval_fn=eval_fn,
        stop_fn=MultiMetricStop(int(ml.patience), float(ml.min_delta), float(ml.min_delta)),
        export_fn=export_fn, description=description,
    )


class LoadedExport:
    """What ``compare`` needs from an export: the tokenizer, the base and the tuned params."""

    def __init__(self, directory: Path, settings: dict, tokenizer, cfg, base, tuned):
        self.directory, self.settings, self.tokenizer = directory, settings, tokenizer
        self.cfg, self.base, self.tuned = cfg, base, tuned


def load_export(directory: str, base_model: str | None = None) -> LoadedExport:
    """Reload an export written by ``export_fn``; ``base_model`` replaces the recorded base (a local copy)."""
    from transformers import AutoTokenizer

    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.files import read_json
    from jaxft.loaders import quantize

    directory = Path(directory)
    settings = read_json(directory / EXPORT_FILE, missing="not found: not a movielens export directory")
    for key in ("base_model", "tuned", "yes_token_id", "no_token_id", "cutoff_len"):
        if key not in settings:
            raise ValueError(f"{directory / EXPORT_FILE}: missing key '{key}'")
    if not (directory / "tokenizer").is_dir():
        raise FileNotFoundError(f"{directory / 'tokenizer'}: missing from the export")
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    encoding.ensure_chat_template(tokenizer)
    dtype = jnp.dtype(settings.get("dtype", "float32"))
    base_ref = base_model or settings["base_model"]
    base_path = directory / base_ref if (directory / base_ref).is_dir() else base_ref
    cfg, base = load_pretrained(base_path, dtype=dtype)
    if settings["tuned"] == "model":
        tuned_cfg, tuned = load_pretrained(directory / "model", dtype=dtype)
        if tuned_cfg.vocab_size != cfg.vocab_size or tuned_cfg.num_hidden_layers != cfg.num_hidden_layers:
            raise ValueError(f"{directory / 'model'}: its shape does not match the base model {base_path}")
    elif settings["tuned"] == "adapter":
        # the adapter was trained over this (maybe quantized) base
        base = quantize(base, cfg, settings.get("quantize", "none"), double_quant=bool(settings.get("double_quant")))
        tuned = lora_lib.apply(base, lora_lib.load_peft(directory / "adapter", cfg))
    else:
        raise ValueError(f"{directory / EXPORT_FILE}: 'tuned' is {settings['tuned']!r}, expected model or adapter")
    return LoadedExport(directory, settings, tokenizer, cfg, base, tuned)


__all__ = ["build", "load_export", "data_dir", "load_tokenizer", "prompts"]
