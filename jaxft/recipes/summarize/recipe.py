"""``build(config, placement)``: LoRA (or full) SFT on document/summary pairs with the boundary-weighted loss.

The per-token loss weights (``boundary_token_weights``) travel in the batch as the per-token field
``loss_weights``; the step's loss is ``sum(weights * CE) / sum(loss_mask)`` and the plain
cross-entropy is logged next to it as ``ce``. Each eval also summarises ``summarize.eval_samples``
validation documents by generation and scores them with ROUGE (``host_eval_fn``). The export holds
the adapter (or the fully tuned model), the tokenizer, ``summarize.json`` (prompt and decoding
settings, the run's config) and ``evaluation_results.json`` for the exported parameters.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxft.recipes.summarize.data import SummaryEncoder, load_pairs, seeded_subset
from jaxft.recipes.summarize.evaluation import (DecodeSettings, constant_baseline, evaluate_summaries, summary_line,
                                                write_results)
from jaxft.recipes.summarize.loss import boundary_token_weights
from jaxft.train.lm import Finetuned, GlobalBatches, export_finetuned, load_finetuned, tune
from jaxft.train.task import TrainTask, data_fingerprint

log = logging.getLogger("jaxft")

RESULTS_FILE = "evaluation_results.json"
SETTINGS_FILE = "summarize.json"
HOST_METRICS = ("rouge1", "rouge2", "rougeL", "avg_summary_length", "avg_generation_time", "distinct_share")


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
    """Parameters as the model has them: a quantized kernel counts its logical shape."""
    from jaxft.quant import QuantizedKernel

    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QuantizedKernel))
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in leaves))


def build(config, placement) -> TrainTask:
    from jaxft.loaders import load_model

    s = config.summarize
    cfg, params, tokenizer = load_model(config.model, config.seed, placement=placement)
    base_param_count = count_params(params)
    double_quant = str(config.model.quantize) == "nf4" and bool(config.model.double_quant)
    lm, trainable, frozen, _ = tune(config, cfg, params, tokenizer, weights_key="loss_weights")
    data = summary_data(config, tokenizer)
    eval_pairs = eval_subset(data.valid_records, int(s.eval_samples), int(config.seed))
    rouge = RougeEval(lm, tokenizer, data.encoder, eval_pairs, decode_settings(s), config)
    rouge.baseline = _constant_baseline(data.train_records, eval_pairs, int(config.seed))

    def export_fn(directory, trainable, frozen):
        settings = {"base_model": config.model.path or None, "quantize": str(config.model.quantize),
                    "double_quant": double_quant, "dtype": str(config.model.dtype), "full_finetune": lm.full,
                    "decode": dataclasses.asdict(rouge.decode), "config": config.to_dict()}
        # a random base exists nowhere else: base/ keeps it (dequantized if the base is quantized)
        export_finetuned(directory, lm, trainable, frozen, source=config.model.path, tokenizer=tokenizer,
                         tokenizer_in=("tokenizer",), merged=bool(config.export.merged),
                         base=None if config.model.path or lm.full else frozen["base"], settings=settings,
                         settings_file=SETTINGS_FILE)
        results = rouge.run(trainable, frozen)
        write_results(Path(directory) / RESULTS_FILE, results)
        log.info("export evaluation: %s", summary_line(results))

    if s.scaling_report and jax.process_index() == 0:
        _print_scaling(config, data, count_params(trainable), base_param_count, lm.full)
    where = config.model.path or "a randomly initialised model (config.model.random_init)"
    loss_text = (f"boundary-weighted loss (window {s.boundary_smooth_window}, w {s.boundary_position_weight}, "
                 f"lambda {s.boundary_loss_weight})" if s.use_boundary_detection else "plain cross-entropy")
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=lm.loss_fn(boundary_sums), train_batches=data.train_batches,
        eval_batches=data.eval_batches, host_eval_fn=rouge.host_eval_fn, samples_fn=rouge.samples_fn,
        export_fn=export_fn, no_decay=_no_decay if lm.full else _lora_no_decay,
        data_fingerprint=data_fingerprint(config.data), train_records=len(data.train_examples),
        description=(f"summarize: {'full fine-tuning' if lm.full else f'LoRA r={config.lora.rank}'} of {where} on "
                     f"{data.source}; {len(data.train_examples)} train / {len(data.valid_records)} validation "
                     f"pairs, rows of {data.seq_len} tokens; {loss_text}; ROUGE on {len(eval_pairs)} validation "
                     f"documents"),
    )


def _constant_baseline(train_records, eval_pairs, seed: int) -> dict[str, Any] | None:
    """The ROUGE a document-independent summary gets on the evaluated documents, logged once."""
    if not eval_pairs:
        return None
    baseline = constant_baseline([r["summary"] for r in train_records], [p[1] for p in eval_pairs], seed=seed)
    log.info("constant baseline (the best of %d training summaries as every document's summary, %r): "
             "ROUGE-1 %.4f  ROUGE-2 %.4f  ROUGE-L %.4f", baseline["candidates"], baseline["summary"],
             baseline["rouge1"], baseline["rouge2"], baseline["rougeL"])
    return baseline


def boundary_sums(out):
    """The divisor is |V|, the number of targets, not the sum of the weights (see loss.py); ``ce_sum``
    is the plain cross-entropy from the same pass over the head."""
    return out.loss_sum, out.count, {"ce": out.ce_sum, "ce_count": out.count,
                                     "accuracy": out.correct, "accuracy_count": out.count}


@dataclasses.dataclass
class SummaryData:
    encoder: SummaryEncoder
    train_records: Any
    valid_records: Any
    source: str
    train_examples: list
    seq_len: int
    train_batches: Any
    eval_batches: Any


def summary_data(config, tokenizer) -> SummaryData:
    """The pairs, encoded, and their batches (validation loss over the first ``train.eval_batches``)."""
    from jaxft.data.pipeline import Field

    s = config.summarize
    encoder = SummaryEncoder(tokenizer, int(s.max_input_length), int(s.max_target_length))
    train_records, valid_records, source = load_pairs(config)
    if len(train_records) == 0 or len(valid_records) == 0:
        raise ValueError(f"data: {len(train_records)} training and {len(valid_records)} validation pairs from "
                         f"{source}; need at least one of each")
    eval_rows = int(config.train.eval_batches) * int(config.train.batch_size)
    # validation loss (the best checkpoint's criterion) on a seeded subset when eval_batches caps it
    valid_for_loss = seeded_subset(valid_records, eval_rows, int(config.seed)) if eval_rows else valid_records
    train_examples, train_counts = encoder.encode([(r["document"], r["summary"]) for r in train_records],
                                                  getattr(train_records, "origins", None))
    valid_examples, valid_counts = encoder.encode([(r["document"], r["summary"]) for r in valid_for_loss],
                                                  getattr(valid_for_loss, "origins", None))
    log.info("data: train: %s", train_counts)
    log.info("data: validation: %s", valid_counts)
    longest = max(len(e["input_ids"]) for e in train_examples + valid_examples)
    seq_len = int(s.seq_len) or -(-longest // 8) * 8
    if seq_len < longest:
        raise ValueError(f"config key 'summarize.seq_len'={seq_len} is shorter than the longest example "
                         f"({longest} tokens); raise it or set it to 0")
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    fields = {"input_ids": Field(pad=pad_id), "loss_mask": Field(), "loss_weights": Field(dtype="float32")}
    batches = GlobalBatches.of(config, seq_len=seq_len, fields=fields, pad_id=pad_id, example_fn=lambda example: {
        **example, "loss_weights": token_weights(example["loss_mask"], s)})
    return SummaryData(encoder, train_records, valid_records, source, train_examples, seq_len,
                       batches.train(train_examples), batches.eval(valid_examples))


class RougeEval:
    """ROUGE of generated summaries at each eval (and at export); the last results feed the samples."""

    def __init__(self, lm, tokenizer, encoder, pairs, decode: DecodeSettings, config):
        self.lm, self.tokenizer, self.encoder, self.pairs, self.decode = lm, tokenizer, encoder, pairs, decode
        self.batch_size, self.seed = int(config.summarize.eval_batch_size), int(config.seed)
        self.results_path = config.summarize.results_path
        self.latest: dict[str, Any] = {}
        self.baseline: dict[str, Any] | None = None  # the constant summary to beat (constant_baseline)

    def run(self, trainable, frozen) -> dict[str, Any]:
        lm = self.lm
        params, lora = (trainable["model"], None) if lm.full else (frozen["base"], lm.adapters(trainable))
        results = evaluate_summaries(lm.cfg, params, self.tokenizer, self.encoder, self.pairs, decode=self.decode,
                                     lora=lora, batch_size=self.batch_size, seed=self.seed)
        if self.baseline is not None:
            results["constant_baseline"] = self.baseline
        return results

    def host_eval_fn(self, trainable, frozen) -> dict[str, float]:
        results = self.run(trainable, frozen)
        self.latest = results
        if self.results_path:
            write_results(self.results_path, results)
        return {k: float(results[k]) for k in HOST_METRICS}

    def samples_fn(self, trainable, frozen) -> dict[str, str]:
        # the eval that just ran generated these; nothing is generated twice
        return {f"summary_{i}": f"{sample['generated_summary']!r} (reference: {sample['target_summary']!r})"
                for i, sample in enumerate(self.latest.get("samples", [])[:2])}


def _print_scaling(config, data: SummaryData, trainable_count: int, base_param_count: int, full: bool) -> None:
    """The Chinchilla block for the planned run."""
    from jaxft.recipes.summarize import scaling

    from jaxft.settings import parse_settings

    # summarize.epochs (= train.epochs) counts the pairs actually read; the engine resolves it the same way
    train = parse_settings(config).with_train_records(len(data.train_examples)).train
    mean_tokens = float(np.mean([len(e["input_ids"]) for e in data.train_examples]))
    planned_tokens = train.steps * train.batch_size * mean_tokens
    analysis = scaling.analyze(params=trainable_count, tokens=planned_tokens,
                               total_params=base_param_count + (0 if full else trainable_count), lora=not full)
    print(scaling.report(analysis), flush=True)


def _no_decay(path, leaf) -> bool:
    from jaxft.checkpoint.hf_names import is_norm_bias_or_embedding

    return path[0] == "model" and is_norm_bias_or_embedding(path)


def _lora_no_decay(path, leaf) -> bool:
    return False  # every LoRA factor gets weight decay, as AdamW over a PEFT model's parameters does


# ---- the export ------------------------------------------------------------------------------


def summary_encoder(loaded: Finetuned) -> SummaryEncoder:
    """The encoder of the run that wrote the export (its input and target lengths)."""
    s = loaded.settings["config"]["summarize"]
    return SummaryEncoder(loaded.tokenizer, int(s["max_input_length"]), int(s["max_target_length"]))


def load_export(directory: str) -> Finetuned:
    """Read back what ``export_fn`` wrote; a missing or broken part raises naming the file."""
    return load_finetuned(directory, settings_file=SETTINGS_FILE, required=("config",), need_tokenizer=True,
                          missing="not a summarize export (no summarize.json)")
