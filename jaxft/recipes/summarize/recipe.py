"""``build(config, mesh)``: LoRA (or full) SFT on document/summary pairs with the boundary-weighted loss.

The per-token loss weights (``boundary_token_weights``) travel in the batch as the per-token field
``loss_weights``; the step's loss is ``sum(weights * CE) / sum(loss_mask)`` and the plain
cross-entropy is logged next to it as ``ce``. Each eval also summarises ``summarize.eval_samples``
validation documents by generation and scores them with ROUGE (``host_eval_fn``). The export holds
the adapter (or the fully tuned model), the tokenizer, ``summarize.json`` (prompt and decoding
settings, the run's config) and ``evaluation_results.json`` for the exported parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.recipes.summarize.data import SummaryEncoder, load_pairs, seeded_subset, steps_for_epochs
from jaxft.recipes.summarize.evaluation import DecodeSettings, evaluate_summaries, summary_line, write_results
from jaxft.recipes.summarize.loss import boundary_token_weights
from jaxft.train.task import TrainTask

log = logging.getLogger("jaxft")

RESULTS_FILE = "evaluation_results.json"
SETTINGS_FILE = "summarize.json"
HOST_METRICS = ("rouge1", "rouge2", "rougeL", "avg_summary_length", "avg_generation_time")


def decode_settings(s) -> DecodeSettings:
    return DecodeSettings(max_new_tokens=int(s.max_new_tokens), temperature=float(s.temperature),
                          greedy=bool(s.greedy))


def token_weights(loss_mask: np.ndarray, s) -> np.ndarray:
    """One example's float32 loss weights: boundary-weighted, or the mask itself (plain CE)."""
    if not s.use_boundary_detection:
        return loss_mask.astype(np.float32)
    return boundary_token_weights(loss_mask[None], window=int(s.boundary_smooth_window),
                                  position_weight=float(s.boundary_position_weight),
                                  loss_weight=float(s.boundary_loss_weight))[0]


def eval_subset(records, count: int, seed: int) -> list[tuple[str, str]]:
    """A seeded choice of ``count`` (document, summary) pairs, in their original order: the same
    documents at every eval, and for ``evaluate`` on the export."""
    return [(r["document"], r["summary"]) for r in seeded_subset(records, count, seed)]


def count_params(tree: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def shift_left(a: jax.Array) -> jax.Array:
    """Per-token values of the predicted token, aligned with the logits that predict it."""
    return jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)


def build(config, mesh) -> TrainTask:
    from jaxft.data import make_batches
    from jaxft.data.pipeline import Field
    from jaxft.loaders import load_model, quantize
    from jaxft.models.decoder import forward, lm_head_weight
    from jaxft.recipes.summarize import scaling
    from jaxft.train.loss import causal_lm_loss, next_token_targets

    s = config.summarize
    model_cfg = config.model.copy_and_resolve_references()
    model_cfg.quantize = "none"  # counted at full size first, then quantized
    cfg, params, tokenizer = load_model(model_cfg, config.seed)
    base_param_count = count_params(params)
    double_quant = str(config.model.quantize) == "nf4" and bool(config.model.double_quant)
    params = quantize(params, cfg, str(config.model.quantize), double_quant=double_quant)
    compute_dtype = jnp.dtype(config.model.compute_dtype)
    lcfg = config.lora
    trainable, frozen, tuning = lora_lib.finetune_trees(jax.random.PRNGKey(config.seed + 1), cfg, params, lcfg)
    full_finetune, lora_config, effective_params = tuning.full, tuning.lora_config, tuning.params
    trainable_count = count_params(trainable)

    # ---- data
    encoder = SummaryEncoder(tokenizer, int(s.max_input_length), int(s.max_target_length))
    train_records, valid_records, source = load_pairs(config)
    if len(train_records) == 0 or len(valid_records) == 0:
        raise ValueError(f"data: {len(train_records)} training and {len(valid_records)} validation pairs from "
                         f"{source}; need at least one of each")
    batch_size = int(config.train.batch_size)
    eval_rows = int(config.train.eval_batches) * batch_size
    # validation loss (the best checkpoint's criterion) on a seeded subset when eval_batches caps it
    valid_for_loss = seeded_subset(valid_records, eval_rows, int(config.seed)) if eval_rows else valid_records
    train_examples, train_counts = encoder.encode([(r["document"], r["summary"]) for r in train_records],
                                                  getattr(train_records, "origins", None))
    valid_examples, valid_counts = encoder.encode([(r["document"], r["summary"]) for r in valid_for_loss],
                                                  getattr(valid_for_loss, "origins", None))
    log.info("data: train: %s", train_counts)
    log.info("data: validation: %s", valid_counts)
    if float(s.epochs) > 0:  # the steps of the data actually read, not of a fixed data set
        config.train.steps = steps_for_epochs(float(s.epochs), len(train_examples), batch_size)
        log.info("summarize.epochs=%s over %d pairs at batch %d: train.steps=%d", s.epochs, len(train_examples),
                 batch_size, int(config.train.steps))
    longest = max(len(e["input_ids"]) for e in train_examples + valid_examples)
    seq_len = int(s.seq_len) or -(-longest // 8) * 8
    if seq_len < longest:
        raise ValueError(f"config key 'summarize.seq_len'={seq_len} is shorter than the longest example "
                         f"({longest} tokens); raise it or set it to 0")
    eval_pairs = eval_subset(valid_records, int(s.eval_samples), int(config.seed))

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    fields = {"input_ids": Field(pad=int(pad_id)), "loss_mask": Field(), "loss_weights": Field(dtype="float32")}

    def example_fn(example):
        return {**example, "loss_weights": token_weights(example["loss_mask"], s)}

    procs = jax.process_count()
    batches = functools.partial(make_batches, example_fn=example_fn, batch_size=batch_size // procs,
                                seq_len=seq_len, fields=fields, pad_id=int(pad_id),
                                shard_index=jax.process_index(), shard_count=procs)
    train_batches = batches(train_examples, seed=int(config.seed), shuffle=True, num_epochs=None)

    # ---- loss
    use_boundary = bool(s.use_boundary_detection)

    def loss_fn(trainable, frozen, batch, rng):
        p = effective_params(trainable, frozen, rng)
        hidden, _ = forward(cfg, p, batch["input_ids"], batch["attention_mask"], remat=config.model.remat,
                            output="hidden", dtype=compute_dtype)
        targets, mask = next_token_targets(batch["input_ids"], batch["loss_mask"])
        head = lm_head_weight(cfg, p, compute_dtype)
        chunk = int(config.loss.chunk_size) or None
        out = causal_lm_loss(hidden, head, targets, mask, shift_left(batch["loss_weights"]), chunk_size=chunk)
        # divisor |V| = number of targets, not the sum of the weights (see loss.py); ``ce_sum`` is the plain
        # cross-entropy from the same pass over the head
        return out.loss_sum, out.count, {"ce": out.ce_sum, "ce_count": out.count,
                                         "accuracy": out.correct, "accuracy_count": out.count}

    # ---- generation-based eval
    decode = decode_settings(s)
    latest: dict[str, Any] = {}

    def run_rouge(trainable, frozen) -> dict[str, Any]:
        if full_finetune:
            return evaluate_summaries(cfg, trainable["model"], tokenizer, encoder, eval_pairs, decode=decode,
                                      batch_size=int(s.eval_batch_size), seed=int(config.seed))
        return evaluate_summaries(cfg, frozen["base"], tokenizer, encoder, eval_pairs, decode=decode,
                                  lora=lora_lib.LoRA(trainable["lora"], lora_config),
                                  batch_size=int(s.eval_batch_size), seed=int(config.seed))

    def host_eval_fn(trainable, frozen) -> dict[str, float]:
        results = run_rouge(trainable, frozen)
        latest.clear()
        latest.update(results)
        if s.results_path:
            write_results(s.results_path, results)
        return {k: float(results[k]) for k in HOST_METRICS}

    def samples_fn(trainable, frozen) -> dict[str, str]:
        # the eval that just ran generated these; nothing is generated twice
        return {f"summary_{i}": f"{sample['generated_summary']!r} (reference: {sample['target_summary']!r})"
                for i, sample in enumerate(latest.get("samples", [])[:2])}

    def export_fn(directory, trainable, frozen):
        from jaxft.checkpoint.hf import save_pretrained

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if full_finetune:
            save_pretrained(directory / "model", cfg, trainable["model"])
        else:
            adapters = lora_lib.LoRA(trainable["lora"], lora_config)
            lora_lib.save_peft(directory / "adapter", cfg, adapters, base_model_name_or_path=config.model.path or None)
            base = jax.device_get(frozen["base"])
            if not config.model.path:  # a random base exists nowhere else; merging zero adapters
                # gives it back as plain arrays (dequantized if the base is quantized)
                save_pretrained(directory / "base", cfg, lora_lib.merge(cfg, base, lora_lib.LoRA(
                    jax.tree.map(np.zeros_like, adapters.params), lora_config)))
            if config.export.merged:
                save_pretrained(directory / "merged", cfg, lora_lib.merge(cfg, base, adapters))
        tokenizer.save_pretrained(str(directory / "tokenizer"))
        settings = {"base_model": config.model.path or None, "quantize": str(config.model.quantize),
                    "double_quant": double_quant, "dtype": str(config.model.dtype), "full_finetune": full_finetune,
                    "decode": dataclasses.asdict(decode), "config": config.to_dict()}
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=str) + "\n")
        results = run_rouge(trainable, frozen)
        write_results(directory / RESULTS_FILE, results)
        log.info("export evaluation: %s", summary_line(results))

    # ---- the Chinchilla block for the planned run
    mean_tokens = float(np.mean([len(e["input_ids"]) for e in train_examples]))
    planned_tokens = int(config.train.steps) * batch_size * mean_tokens
    if s.scaling_report and jax.process_index() == 0:
        analysis = scaling.analyze(params=trainable_count, tokens=planned_tokens,
                                   total_params=base_param_count + (0 if full_finetune else trainable_count),
                                   lora=not full_finetune)
        print(scaling.report(analysis), flush=True)

    where = config.model.path or "a randomly initialised model (config.model.random_init)"
    loss_text = (f"boundary-weighted loss (window {s.boundary_smooth_window}, w {s.boundary_position_weight}, "
                 f"lambda {s.boundary_loss_weight})" if use_boundary else "plain cross-entropy")
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=loss_fn, train_batches=train_batches,
        eval_batches=lambda: batches(valid_examples, seed=0, shuffle=False, num_epochs=1),
        host_eval_fn=host_eval_fn, samples_fn=samples_fn, export_fn=export_fn,
        no_decay=_no_decay if full_finetune else _lora_no_decay,
        description=(f"summarize: {'full fine-tuning' if full_finetune else f'LoRA r={lcfg.rank}'} of {where} on "
                     f"{source}; {len(train_examples)} train / {len(valid_records)} validation pairs, rows of "
                     f"{seq_len} tokens; {loss_text}; ROUGE on {len(eval_pairs)} validation documents"),
    )


def _no_decay(path, leaf) -> bool:
    from jaxft.checkpoint.hf_names import is_norm_bias_or_embedding

    return path[0] == "model" and is_norm_bias_or_embedding(path)


def _lora_no_decay(path, leaf) -> bool:
    return False  # every LoRA factor gets weight decay, as AdamW over a PEFT model's parameters does


# ---- the export ------------------------------------------------------------------------------


@dataclasses.dataclass
class Summarizer:
    """A loaded export: the model, its adapters (None for a fully tuned model), tokenizer and settings."""

    cfg: Any
    params: Any
    adapters: Any
    tokenizer: Any
    settings: dict

    def config(self):
        from ml_collections import ConfigDict

        return ConfigDict(self.settings["config"])

    def encoder(self) -> SummaryEncoder:
        s = self.settings["config"]["summarize"]
        return SummaryEncoder(self.tokenizer, int(s["max_input_length"]), int(s["max_target_length"]))


def load_export(directory: str) -> Summarizer:
    """Read back what ``export_fn`` wrote; a missing or broken part raises naming the file."""
    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.files import read_json
    from jaxft.loaders import quantize
    from jaxft.tokenization import load_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such export directory")
    settings = read_json(directory / SETTINGS_FILE, missing="not a summarize export (no summarize.json)")
    if not isinstance(settings, dict) or "config" not in settings:
        raise ValueError(f"{directory / SETTINGS_FILE}: no 'config' entry")
    if not (directory / "tokenizer").is_dir():
        raise FileNotFoundError(f"{directory / 'tokenizer'}: the export has no tokenizer")
    tokenizer = load_tokenizer(directory / "tokenizer")
    dtype = jnp.dtype(settings.get("dtype", "float32"))
    if settings.get("full_finetune"):
        cfg, params = load_pretrained(directory / "model", dtype=dtype)
        return Summarizer(cfg, params, None, tokenizer, settings)
    adapter = directory / "adapter"
    if not adapter.is_dir():
        raise FileNotFoundError(f"{adapter}: the export has no adapter")
    base = directory / "base" if (directory / "base").is_dir() else settings.get("base_model")
    if not base:
        raise FileNotFoundError(f"{directory}: no base/ and no base_model in {SETTINGS_FILE}")
    cfg, params = load_pretrained(base, dtype=dtype)
    params = quantize(params, cfg, settings.get("quantize", "none"), double_quant=bool(settings.get("double_quant")))
    return Summarizer(cfg, params, lora_lib.load_peft(adapter, cfg), tokenizer, settings)
