"""``build(config, placement) -> TrainTask`` for the condense recipe (see ``configs/condense.py``).

The encoder and decoder are ``config.encoder`` / ``config.decoder`` (``jaxft.config.model_section``),
the encoder's adapters ``config.lora``, the records ``config.data``; everything else is ``config.condense``.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp

from jaxft import lora as lora_lib
from jaxft.checkpoint.hf_names import is_norm_bias_or_embedding
from jaxft.loaders import load_model, load_records
from jaxft.train.lm import GlobalBatches
from jaxft.train.task import TrainTask, data_fingerprint
from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense.data import ExampleBuilder, Layout, Tokens, example_fields
from jaxft.recipes.condense.objectives import check_weights, make_loss_fn

log = logging.getLogger("jaxft")

REAL_SETTING = ("python -m jaxft.main --config configs/condense.py:seed  (encoder meta-llama/Llama-3.2-1B, "
                "frozen decoder mistralai/Mistral-7B-Instruct-v0.2)")


def demo_banner(train_decoder: bool) -> str:
    decoder = ("; the decoder's weights train too (condense.train_decoder, demo only: a random frozen decoder "
               "cannot be steered in minutes)" if train_decoder else "")
    return ("condense demo: small random Llama-shaped encoder and Mistral-shaped decoder, different tokenizers on "
            f"the two sides,\n  offline text from Python's docstrings{decoder}.\n"
            f"  The real setting: {REAL_SETTING}")


def layout_from_config(k) -> Layout:
    ins = k.instruction
    instruction = float(k.objectives.get("instruction", 0.0)) > 0
    return Layout.create(max_tokens=int(k.max_tokens), compression_ratio=float(k.compression_ratio),
                         num_segments=int(k.num_segments), max_decoder_tokens=int(k.max_decoder_tokens),
                         max_continuation_tokens=int(k.max_continuation_tokens),
                         max_characters=int(k.max_characters),
                         max_prompt_tokens=int(ins.max_prompt_tokens) if instruction else 0,
                         max_completion_tokens=int(ins.max_completion_tokens) if instruction else 0)


def group_fn(path: tuple[str, ...], leaf) -> str:
    """Each trainable part is its own optimizer group (its own learning rate)."""
    return path[0]


def make_no_decay(decay_all: bool):
    """``decay_all``: every trainable leaf decays (torch AdamW over the reference's groups); else learned
    input embeddings (condense tokens, markers), biases and norms get no weight decay."""
    def no_decay(path: tuple[str, ...], leaf) -> bool:
        if decay_all:
            return False
        if path[0] in ("condense_tokens", "markers"):
            return True
        if path[0] == "decoder":
            return is_norm_bias_or_embedding(path)
        return path[-1] in ("bias", "scale") or len(getattr(leaf, "shape", ())) <= 1

    return no_decay


def build_parts(config, placement=None) -> dict[str, Any]:
    """Models, tokenizers and the initial trees (no data), shared by ``build`` and tests; the frozen
    models are loaded onto ``placement`` (see ``jaxft.loaders.load_model``)."""
    k = config.condense
    seed = int(config.seed)
    encoder = load_model(config.encoder, seed, section="encoder", placement=placement)
    decoder = load_model(config.decoder, seed + 1, section="decoder", placement=placement)
    enc_cfg, enc_params = encoder.cfg, encoder.params
    if config.encoder.path and not enc_cfg.tie_word_embeddings:
        enc_params = {key: value for key, value in enc_params.items() if key != "lm_head"}  # never read

    layout = layout_from_config(k)
    lk = config.lora
    if int(lk.rank) <= 0:
        raise ValueError("config key 'lora.rank' must be positive: the condense encoder trains through its adapters")
    k_lora, k_condense = jax.random.split(jax.random.PRNGKey(seed + 2))
    adapters = lora_lib.init(k_lora, enc_cfg, enc_params, rank=int(lk.rank), alpha=float(lk.alpha),
                             targets=tuple(lk.targets), dropout=float(lk.dropout), use_rslora=bool(lk.rslora))
    train_decoder = bool(k.train_decoder)
    if train_decoder and config.decoder.quantize not in ("", "none"):
        raise ValueError("condense.train_decoder cannot train a quantized decoder; set decoder.quantize=none")
    if config.encoder.compute_dtype != config.decoder.compute_dtype:
        raise ValueError(f"config keys 'encoder.compute_dtype'={config.encoder.compute_dtype!r} and "
                         f"'decoder.compute_dtype'={config.decoder.compute_dtype!r} differ; the condensed states "
                         "pass from one to the other, so give both the same")
    model = model_lib.CondenseModel(
        encoder=enc_cfg, decoder=decoder.cfg, num_condense_tokens=layout.num_condense_tokens,
        segment_length=layout.segment_length, dtype=jnp.dtype(config.encoder.compute_dtype),
        remat=str(config.encoder.remat), decoder_remat=str(config.decoder.remat),
        decoder_remat_group=int(config.decoder.remat_group), train_decoder=train_decoder, lora_config=adapters.config,
        projector=str(k.projector), positions=str(k.positions))
    embed_table = decoder.params["model"]["embed_tokens"]["weight"]
    embed_std = float(jnp.std(jnp.asarray(embed_table, jnp.float32)))
    trainable = {"lora": adapters.params, **model_lib.init_params(k_condense, model, embed_std)}
    if k.init_from:
        from jaxft.recipes.condense.reference import import_reference

        trainable = import_reference(k.init_from, model, trainable)
    frozen = {"encoder": enc_params}
    if train_decoder:
        trainable["decoder"] = decoder.params
    else:
        frozen["decoder"] = decoder.params
    return dict(model=model, layout=layout, trainable=trainable, frozen=frozen,
                encoder_tokenizer=encoder.tokenizer, decoder_tokenizer=decoder.tokenizer)


def load_items(config, builder: ExampleBuilder) -> tuple[list, list[Tokens], str]:
    """The configured records (texts, or instruction records) after the length filter, their tokens
    and a line saying what was filtered. Without data: the offline demo corpus."""
    from jaxft.data.corpus import demo_corpus

    k, data = config.condense, config.data
    if builder.instruction:
        records = load_records(data, columns=tuple(builder.instruction_columns))
        if records is None:
            raise ValueError("condense.objectives.instruction needs records with columns "
                             f"{', '.join(builder.instruction_columns)}: set data.path or data.hf_dataset")
        items = list(records)
    else:
        records = load_records(data)
        items = demo_corpus()[: int(data.max_records) or None] if records is None else \
            [r[data.text_column] for r in records]
    return filter_items(items, builder, int(k.min_characters))


def filter_items(items: list, builder: ExampleBuilder, min_characters: int) -> tuple[list, list[Tokens], str]:
    """Keep texts of at least ``min_characters`` that fill one whole segment and have a continuation
    after it (every kept text trains every objective); instruction records are all kept. Each item is
    tokenized here, once: the batches are built from these tokens (a malformed record fails here)."""
    total = len(items)
    short = structural = 0
    kept, kept_tokens = [], []
    for item in items:
        if isinstance(item, str) and (not item.strip() or len(item) < min_characters):
            short += 1
            continue
        tokens = builder.tokens(item)
        if not builder.usable(tokens):
            structural += 1
            continue
        kept.append(item)
        kept_tokens.append(tokens)
    line = (f"{len(kept)} of {total} records kept ({short} shorter than condense.min_characters={min_characters} "
            f"or empty, {structural} without a whole first segment of {builder.layout.segment_length} encoder "
            "tokens and a continuation after it)")
    return kept, kept_tokens, line


def pick_sample(pairs: list[tuple[Any, Tokens]], max_segments: int, candidates: int = 200):
    """Of ``(item, tokens)`` pairs, the first item that fills every segment (so the samples show all
    levels), else the one filling most."""
    best, best_segments = pairs[0][0], 0
    for item, tokens in pairs[:candidates]:
        if tokens.num_segments == max_segments:
            return item
        if tokens.num_segments > best_segments:
            best, best_segments = item, tokens.num_segments
    return best


def text_samples(condenser, sample, columns: tuple[str, str, str], weights: dict[str, float],
                 max_new_tokens: int) -> dict[str, str]:
    """What the objectives being trained produce for one validation item: the reconstruction and the
    continuation of its text (AE, continuation), and for an instruction record the completion the decoder
    writes after ``[condensed context][prompt]``."""
    text = sample if isinstance(sample, str) else sample[columns[0]]
    out = {}
    if weights["ae"] or weights["continuation"] or isinstance(sample, str):
        out.update(condenser.samples(text, max_new_tokens=max_new_tokens))
    if not isinstance(sample, str):
        out.update(condenser.instruction_samples(text, sample[columns[1]], sample[columns[2]],
                                                 max_new_tokens=max_new_tokens))
    return out


def build(config, placement) -> TrainTask:
    from jaxft.data import split_records
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser

    k = config.condense
    if str(k.design) == "gist":
        from jaxft.recipes.condense.gist_task import build_gist

        return build_gist(config, placement)
    if str(k.design) != "condense":
        raise ValueError(f"config key 'condense.design'={k.design!r}: expected condense or gist")
    weights = check_weights(dict(k.objectives))
    demo = not config.encoder.path and not config.decoder.path
    if demo and jax.process_index() == 0:
        print(demo_banner(bool(k.train_decoder)), flush=True)
    parts = build_parts(config, placement)
    model, layout = parts["model"], parts["layout"]
    enc_tok, dec_tok = parts["encoder_tokenizer"], parts["decoder_tokenizer"]
    ins = k.instruction
    builder = ExampleBuilder(enc_tok, dec_tok, layout,
                             (ins.context_column, ins.prompt_column, ins.completion_column))

    items, tokens, filtered = load_items(config, builder)
    log.info("condense data: %s", filtered)
    if len(items) < 2:
        raise ValueError(f"condense data: {filtered}; need at least 2 (train and validation)")
    # The batches are built from the tokens (no tokenizing after this); the items only give the sample text.
    train_pairs, valid_pairs = split_records(list(zip(items, tokens)), float(config.data.validation_fraction),
                                             int(config.seed))
    train, valid = [t for _, t in train_pairs], [t for _, t in valid_pairs]
    batches = GlobalBatches.of(config, example_fn=builder, fields=example_fields(layout), num_threads=2)
    train_batches, eval_batches = batches.train(train), batches.eval(valid)

    def condenser_of(trainable, frozen) -> Condenser:
        return Condenser(model=model, layout=layout, trainable=trainable, frozen=frozen, encoder_tokenizer=enc_tok,
                         decoder_tokenizer=dec_tok)

    sample = pick_sample(valid_pairs or train_pairs, layout.max_segments)
    max_new = int(k.samples.max_new_tokens)

    def samples_fn(trainable, frozen) -> dict[str, str]:
        return text_samples(condenser_of(trainable, frozen), sample, builder.instruction_columns, weights, max_new)

    def export_fn(directory: str, trainable, frozen) -> None:
        export_condenser(directory, condenser_of(trainable, frozen), encoder_source=config.encoder.path,
                         decoder_source=config.decoder.path, quantize_encoder=config.encoder.quantize,
                         quantize_decoder=config.decoder.quantize)

    loss_fn = make_loss_fn(model, weights=weights, chunk_size=int(config.loss.chunk_size))
    where = (f"encoder {config.encoder.path or 'random (encoder.random_init)'}, "
             f"decoder {config.decoder.path or 'random (decoder.random_init)'}")
    objectives = ", ".join(f"{name} x{w:g}" for name, w in weights.items() if w)
    ratio = layout.max_tokens / layout.total_condense_tokens
    description = (f"condense: {where}; {layout.max_tokens} encoder tokens in {layout.max_segments} segment(s) -> "
                   f"{layout.total_condense_tokens} condensed states ({ratio:g}x) at {model.positions} positions; "
                   f"projector {model.projector}; "
                   f"objectives {objectives}; LoRA r={config.lora.rank}; "
                   f"{len(train)} train / {len(valid)} validation records; {filtered}")
    return TrainTask(
        trainable=parts["trainable"], frozen=parts["frozen"], loss_fn=loss_fn, train_batches=train_batches,
        group_fn=group_fn, no_decay=make_no_decay(bool(k.decay_all)), eval_batches=eval_batches,
        samples_fn=samples_fn, export_fn=export_fn, tokens_key="enc_mask", description=description,
        data_fingerprint=data_fingerprint(config.data), train_records=len(train),
    )
