"""``condense.design=gist``: the reference's single-model gist design as a ``TrainTask`` (see ``gist.py``).

``config.encoder`` is the one LLM (LoRA'd as the compressor, frozen as the target; ``config.decoder``
is not read), ``config.lora`` its adapters, ``config.condense.gist`` the layout and
``config.condense.objectives.{ae,continuation}`` the weights of auto-encoding and completing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.loaders import load_model, load_records
from jaxft.recipes.condense import gist
from jaxft.recipes.condense.gist_inference import complete, export_gist, text_tokens
from jaxft.recipes.condense.objectives import check_weights
from jaxft.train.lm import GlobalBatches
from jaxft.train.task import TrainTask, data_fingerprint

log = logging.getLogger("jaxft")


def layout_from_config(g) -> gist.GistLayout:
    return gist.GistLayout(span_length=int(g.span_tokens), num_gist_tokens=int(g.gist_tokens),
                           max_tokens=int(g.max_tokens), num_flags=int(g.num_flags))


def import_gist(path: str | Path, model: gist.GistModel, trainable: dict[str, Any]) -> dict[str, Any]:
    """``trainable`` with gist tokens and flags (and the LoRA, when an adapter sits next to the file) from a
    Dec 2024 ``modules`` or Jan 2025 ``gist`` ``modules.pt``."""
    from jaxft.recipes.condense.reference import load_adapter_beside
    from jaxft.recipes.condense.reference_formats import FORMATS, find_modules_file, read_reference

    file = find_modules_file(path)
    w = read_reference(file)
    n, h, f = model.layout.num_gist_tokens, model.llm.hidden_size, model.layout.num_flags
    needs = "condense.design=gist with this LLM and condense.gist"
    if w.format == "modules":
        tokens = w.expect("modules.condense_tokens", (1, n, h), needs)[0]
        ae = w.expect("modules.ae_embedding", (1, f, h), needs)[0]
        lm = w.expect("modules.lm_embedding", (1, f, h), needs)[0]
    elif w.format == "gist":
        tokens = w.expect("gist_tokens", (n, h), needs)
        ae, lm = w.expect("auto_encoding_embedding", (f, h), needs), w.expect("lm_embedding", (f, h), needs)
    else:
        raise ValueError(f"{file}: a {FORMATS[w.format]} checkpoint has a projector; it imports into "
                         "condense.design=condense with condense.projector=reference")
    out = {**trainable, "gist_tokens": jnp.asarray(tokens), "flags": {"ae": jnp.asarray(ae), "lm": jnp.asarray(lm)}}
    lora = load_adapter_beside(path, file, model.llm, model.lora_config)
    if lora is not None:
        out["lora"] = lora
    return out


def build_gist_parts(config, placement=None) -> dict[str, Any]:
    """The LLM, its tokenizer and the initial trees (no data)."""
    k, lk, seed = config.condense, config.lora, int(config.seed)
    if int(lk.rank) <= 0:
        raise ValueError("config key 'lora.rank' must be positive: the gist compressor trains through its adapters")
    llm = load_model(config.encoder, seed, section="encoder", placement=placement)
    k_lora, k_gist = jax.random.split(jax.random.PRNGKey(seed + 2))
    adapters = lora_lib.init(k_lora, llm.cfg, llm.params, rank=int(lk.rank), alpha=float(lk.alpha),
                             targets=tuple(lk.targets), dropout=float(lk.dropout), use_rslora=bool(lk.rslora))
    model = gist.GistModel(llm=llm.cfg, layout=layout_from_config(k.gist), lora_config=adapters.config,
                           dtype=jnp.dtype(config.encoder.compute_dtype), remat=str(config.encoder.remat))
    trainable = {"lora": adapters.params, **gist.init_params(k_gist, model)}
    if k.init_from:
        trainable = import_gist(k.init_from, model, trainable)
    return dict(model=model, trainable=trainable, frozen={"llm": llm.params}, tokenizer=llm.tokenizer)


def load_texts(config, tokenizer, layout: gist.GistLayout) -> tuple[list[list[int]], str]:
    """Token ids of the texts longer than ``condense.gist.min_characters`` characters (the reference's
    ``len(text) > 2000``) that give at least two spans (one span has no completing level); the counts."""
    from jaxft.data.corpus import demo_corpus

    data, min_chars = config.data, int(config.condense.gist.min_characters)
    records = load_records(data)
    texts = demo_corpus()[: int(data.max_records) or None] if records is None else \
        [r[data.text_column] for r in records]
    kept, short, one_span = [], 0, 0
    for text in texts:
        if len(text) <= min_chars:
            short += 1
            continue
        ids = text_tokens(tokenizer, text, layout)
        if len(ids) <= layout.span_length:
            one_span += 1
            continue
        kept.append(ids)
    line = (f"{len(kept)} of {len(texts)} texts kept ({short} of at most condense.gist.min_characters={min_chars} "
            f"characters, {one_span} of one span of {layout.span_length} tokens or less)")
    return kept, line


SEED_TOKENS = 8  # the reference's completing samples continue after the first 8 tokens of the next span


def gist_sample(model: gist.GistModel, trainable, frozen, tokenizer, ids: list[int],
                max_new_tokens: int = 64) -> dict[str, str]:
    """The reference's validation sample (``lit.py`` ``generate`` on completing level 1): greedy text from
    ``[gist of span 0][LM flags][the next span's first 8 tokens]``, next to the text it stands for."""
    layout = model.layout
    ex = gist.span_example(ids, layout)
    gists = gist.gist_features_jit(model, trainable, frozen, ex["ids"][None], ex["mask"][None])
    seed_ids = ex["ids"][1][ex["mask"][1]][:SEED_TOKENS]
    generated = complete(model, trainable, frozen, gists[0, 0], seed_ids, max_new_tokens)
    rest = np.concatenate([row[m] for row, m in zip(ex["ids"][1:], ex["mask"][1:])])
    return {"gisted": tokenizer.decode(list(ex["ids"][0][ex["mask"][0]]) + list(seed_ids)),
            "target": tokenizer.decode(list(rest[SEED_TOKENS:])),
            "generated": tokenizer.decode(generated)}


def build_gist(config, placement) -> TrainTask:
    from jaxft.data import Field, split_records

    weights = check_weights(dict(config.condense.objectives))
    if weights["instruction"]:
        raise ValueError("config key 'condense.objectives.instruction': the gist design trains ae and continuation "
                         "(completing) only")
    if config.decoder.path not in ("", config.encoder.path):
        raise ValueError(f"config key 'decoder.path'={config.decoder.path!r}: the gist design's target is the "
                         f"compressor's own LLM (encoder.path={config.encoder.path!r}); give the same path or none")
    if config.encoder.path and not (config.data.path or config.data.hf_dataset):
        raise ValueError("condense gist: set data.path (or data.hf_dataset) to records whose "
                         f"'{config.data.text_column}' column holds the chat-templated conversations")
    parts = build_gist_parts(config, placement)
    model, tokenizer = parts["model"], parts["tokenizer"]
    layout = model.layout
    tokens, filtered = load_texts(config, tokenizer, layout)
    log.info("condense gist data: %s", filtered)
    if len(tokens) < 2:
        raise ValueError(f"condense gist data: {filtered}; need at least 2 (train and validation)")
    train, valid = split_records(tokens, float(config.data.validation_fraction), int(config.seed))
    spans = (layout.max_spans, layout.span_length)
    fields = {"ids": Field(shape=spans), "mask": Field(shape=spans, pad=False, dtype="bool")}
    batches = GlobalBatches.of(config, example_fn=lambda ids: gist.span_example(ids, layout), fields=fields,
                               num_threads=2)
    chunk = int(config.loss.chunk_size) or None

    def loss_fn(trainable, frozen, batch, rng):
        return gist.gist_loss(model, trainable, frozen, batch, rng, weights=weights, chunk_size=chunk)

    def export_fn(directory: str, trainable, frozen) -> None:
        export_gist(directory, model, trainable, frozen, tokenizer, str(config.encoder.path))

    sample_ids = (valid or train)[0]
    max_new = int(config.condense.samples.max_new_tokens)

    def samples_fn(trainable, frozen) -> dict[str, str]:
        return gist_sample(model, trainable, frozen, tokenizer, sample_ids, max_new)

    llm = config.encoder.path or "random (encoder.random_init)"
    description = (f"condense gist design: one LLM {llm} as LoRA'd compressor (r={config.lora.rank}) and frozen "
                   f"target; {layout.max_tokens} tokens in spans of {layout.span_length} -> "
                   f"{layout.num_gist_tokens} gist tokens each; objectives ae x"
                   f"{weights['ae']:g}, completing x{weights['continuation']:g}; {len(train)} train / {len(valid)} "
                   f"validation texts; {filtered}")
    return TrainTask(trainable=parts["trainable"], frozen=parts["frozen"], loss_fn=loss_fn,
                     train_batches=batches.train(train), group_fn=lambda path, leaf: path[0],
                     no_decay=lambda path, leaf: not bool(config.condense.decay_all) and path[0] != "lora",
                     eval_batches=batches.eval(valid), samples_fn=samples_fn, export_fn=export_fn, tokens_key="mask",
                     description=description, data_fingerprint=data_fingerprint(config.data),
                     train_records=len(train))
