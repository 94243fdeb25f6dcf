"""The minigpt recipe: pretrain a small GPT from scratch, or LoRA-SFT it, on jaxft's engine.

Pretraining reads random windows of a memory-mapped token file; SFT reads
``### Instruction: ... ### Response:\\n ...`` examples with the loss on the response only.
The tokenizer is a SentencePiece model (trained on the run's text when none is given,
cached by text hash), a character vocabulary, or any tokenizer spec of ``config.model``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.config import DecoderConfig
from jaxft.recipes.minigpt import data as mdata
from jaxft.recipes.minigpt.export import copy_spm_model, load_for_inference, spm_model_of
from jaxft.recipes.minigpt.model import hf_config
from jaxft.train.lm import GlobalBatches, export_finetuned, per_process_batch_size, tune
from jaxft.train.task import TrainTask, data_fingerprint

log = logging.getLogger("jaxft")

MODES = ("pretrain", "sft")


def _texts(config, mode: str) -> tuple[list[str], str]:
    from jaxft.data.corpus import demo_corpus
    from jaxft.data.records import RecordList
    from jaxft.loaders import load_records

    records = load_records(config.data)
    if records is not None:
        column = config.data.text_column
        where = config.data.path or config.data.hf_dataset
        texts = RecordList([r[column] for r in records], origins=getattr(records, "origins", None) or None)
        return texts, where  # with their origins, so an SFT error names the file and line
    limit = int(config.data.max_records) or None
    if mode == "sft":
        count = limit or int(config.minigpt.demo_sft_examples)
        return mdata.demo_sft_texts(count, seed=int(config.seed)), f"{count} generated instruction/response pairs"
    return demo_corpus()[:limit], "the offline demo corpus (Python's own docstrings)"


def _cache_dir(config) -> Path:
    from jaxft.assets import cache_dir

    return Path(config.minigpt.cache_dir).expanduser() if config.minigpt.cache_dir else cache_dir() / "minigpt"


def _tokenizer(config, texts: list[str]):
    """(tokenizer, its SentencePiece model file or None)."""
    from jaxft.loaders import load_tokenizer_spec

    if config.init_from:
        directory = Path(config.init_from)
        _, _, tok = load_for_inference(directory)
        from jaxft.recipes.minigpt.export import model_dir

        return tok, spm_model_of(model_dir(directory))
    spec = str(config.model.tokenizer)
    if spec or config.model.path:
        tok = load_tokenizer_spec(spec, config.model.path)
        kind, _, rest = spec.partition(":")
        spm = Path(rest) if kind == "sentencepiece" else spm_model_of(spec) if Path(spec).is_dir() else None
        if spm is not None and spm.is_dir():
            spm = spm_model_of(spm)
        return tok, spm
    # No tokenizer given: train one on the run's text (once; cached by text, size and kind).
    kind, size = str(config.minigpt.tokenizer_type), int(config.minigpt.vocab_size)
    key = hashlib.sha256(f"{mdata.texts_fingerprint(texts)}-{kind}-{size}".encode()).hexdigest()[:16]
    directory = _cache_dir(config) / "tokenizers" / f"{kind}-{size}-{key}"
    if kind == "char":
        from jaxft.tokenization.char import build_char_vocab, char_tokenizer

        return (char_tokenizer(directory) if (directory / "char_vocab.json").is_file()
                else build_char_vocab(texts, directory)), None
    from jaxft.tokenization.sentencepiece import sentencepiece_tokenizer, train_sentencepiece

    spm = directory / "tokenizer.model"
    if spm.is_file():
        return sentencepiece_tokenizer(spm), spm
    log.info("minigpt: training a %s SentencePiece tokenizer (%d pieces) on %d texts", kind, size, len(texts))
    return train_sentencepiece(texts, directory, vocab_size=size, model_type=kind), spm


def _model(config, tokenizer, placement=None):
    m = config.minigpt
    dtype = jnp.dtype(config.model.dtype)
    if config.init_from:
        cfg, params, _ = load_for_inference(config.init_from)
        return cfg.replace(dropout=float(m.dropout)) if cfg.model_type == "minigpt" else cfg, \
            jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    if config.model.path:
        from jaxft.loaders import load_model

        loaded = load_model(config.model, int(config.seed), placement=placement)
        return loaded.cfg, loaded.params
    hf = hf_config(vocab_size=len(tokenizer), hidden_size=int(m.d_model), num_layers=int(m.n_layer),
                   num_heads=int(m.n_head), num_kv_heads=int(m.n_kv_head) or None, context=int(m.context),
                   dropout=float(m.dropout), shape=str(m.shape), **({} if m.shape == "llama" else dict(
                       parallel_residual=bool(m.parallel_residual), norm_type=str(m.norm_type),
                       position_embedding=str(m.position_embedding))),
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    from jaxft.models.init import init_params

    cfg = DecoderConfig.from_hf(hf, source="config.minigpt")
    return cfg, init_params(cfg, jax.random.PRNGKey(int(config.seed)), dtype, std=float(m.init_std))


def build(config, placement) -> TrainTask:
    m = config.minigpt
    mode = str(m.mode)
    if mode not in MODES:
        raise ValueError(f"config key 'minigpt.mode'={mode!r}: expected pretrain or sft")
    texts, where = _texts(config, mode)
    tokenizer, spm_model = _tokenizer(config, texts)
    cfg, params = _model(config, tokenizer, placement)
    seq_len = int(config.data.seq_len)
    if seq_len > cfg.max_position_embeddings:
        raise ValueError(f"config key 'data.seq_len'={seq_len} exceeds the model's context "
                         f"{cfg.max_position_embeddings}")
    # label smoothing shapes the training loss only; eval reports the plain NLL
    lm, trainable, frozen, _ = tune(config, cfg, params, tokenizer, label_smoothing=float(m.label_smoothing),
                                    packed=True, model_dropout=True)
    batches = (_pretrain_batches if mode == "pretrain" else _sft_batches)(config, texts, tokenizer, cfg, seq_len)
    train_batches, eval_batches, sizes = batches

    def samples_fn(trainable, frozen):
        from jaxft.recipes.minigpt.sampling import reference_sampling
        from jaxft.sampling import generate

        s = config.minigpt.sample
        sampling = reference_sampling(cfg, tokenizer, temp=float(s.temp), top_p=float(s.top_p),
                                      min_new=int(s.min_new), max_new=int(s.max_new),
                                      rep_penalty=float(s.rep_penalty), no_repeat=int(s.no_repeat))
        p = lm.params(trainable, frozen)
        out = {}
        for i, prompt in enumerate(s.prompts, 1):
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            gen = generate(cfg, p, np.asarray([ids], np.int32), sampling, seed=int(s.seed) + i - 1)
            out[f"prompt_{i}"] = tokenizer.decode(ids + gen.token_lists()[0], skip_special_tokens=True)
        return out

    def export_fn(directory, trainable, frozen):
        source = str(Path(config.init_from).resolve()) if config.init_from else None
        export_finetuned(directory, lm, trainable, frozen, source=source, tokenizer=tokenizer,
                         tokenizer_in=("model", "merged", "adapter"), merged=True)
        for part in ("model", "merged"):  # the SentencePiece model beside the weights, for GGUF export
            if (Path(directory) / part).is_dir():
                copy_spm_model(Path(directory) / part, spm_model)

    shape = "reference block" if cfg.model_type == "minigpt" else f"{cfg.model_type}-shaped"
    what = "full training" if lm.full else f"LoRA r={config.lora.rank} on {', '.join(config.lora.targets)}"
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=lm.loss_fn(), train_batches=train_batches,
        eval_batches=eval_batches, samples_fn=samples_fn if m.sample.prompts else None, export_fn=export_fn,
        # The reference's AdamW decays every parameter; so does this one.
        no_decay=lambda path, leaf: False,
        data_fingerprint=data_fingerprint(config.data),
        description=f"minigpt {mode}: {what} of a {shape} model "
                    f"({sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M parameters, "
                    f"d={cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}) on {where}; "
                    f"{sizes}",
    )


def _pretrain_batches(config, texts: list[str], tokenizer, cfg, seq_len: int):
    """Random windows of the run's token file, and every consecutive validation window."""
    m = config.minigpt
    per_process = per_process_batch_size(config.train.batch_size)
    name = str(m.token_file) or str(_cache_dir(config) / "tokens" / f"{mdata.texts_fingerprint(texts)[:16]}.bin")
    tokens = mdata.token_file(texts, tokenizer, name)
    train, valid = mdata.split_stream(tokens, float(m.validation_fraction))
    train_batches = mdata.WindowBatches(train, batch_size=per_process, seq_len=seq_len,
                                        seed=int(config.seed) * jax.process_count() + jax.process_index())
    eval_batches = functools.partial(mdata.eval_windows, valid, batch_size=per_process, seq_len=seq_len)
    baseline = mdata.unigram_loss(train, valid, cfg.vocab_size)
    return train_batches, eval_batches, (f"{len(train)} train / {len(valid)} validation tokens; unigram baseline "
                                         f"loss {baseline:.4f} (perplexity {np.exp(baseline):.1f})")


def _sft_batches(config, texts: list[str], tokenizer, cfg, seq_len: int):
    """Instruction/response examples (loss on the response), padded or packed."""
    from jaxft.data import split_records

    packing = bool(config.minigpt.packing)
    examples = mdata.sft_examples(texts, tokenizer, max_len=seq_len, origins=getattr(texts, "origins", None))
    train, valid = split_records(examples, float(config.data.validation_fraction), int(config.seed))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = GlobalBatches.of(config, example_fn=lambda r: r, seq_len=seq_len, packing=packing, pad_id=pad)
    return batches.train(train), batches.eval(valid), (f"{len(train)} train / {len(valid)} validation examples "
                                                       f"({'packed' if packing else 'padded'})")
