"""``build(config, mesh) -> TrainTask`` for the condense recipe (see ``configs/condense.py``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxft import lora as lora_lib
from jaxft.checkpoint.hf_names import is_norm_bias_or_embedding
from jaxft.models.config import DecoderConfig
from jaxft.models.init import init_params as init_llm
from jaxft.train.task import TrainTask
from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense.data import ExampleBuilder, Layout, example_fields
from jaxft.recipes.condense.objectives import make_loss_fn

REAL_SETTING = ("python -m jaxft.main --config configs/condense.py:seed --config.condense.encoder=meta-llama/"
                "Llama-3.2-1B --config.condense.decoder=mistralai/Mistral-7B-Instruct-v0.2")


def demo_banner(train_decoder: bool) -> str:
    decoder = ("; the decoder's weights train too (condense.train_decoder, demo only: a random frozen decoder "
               "cannot be steered in minutes)" if train_decoder else "")
    return ("condense demo: small random Llama-shaped encoder and Mistral-shaped decoder, different tokenizers on "
            f"the two sides,\n  offline text from Python's docstrings{decoder}.\n"
            f"  The real setting: {REAL_SETTING}")


def load_tokenizer(spec: str, model_path: str, which: str):
    """``demo:<kind>[:vocab]`` -> a demo tokenizer; a path/hub id (default: the model's) -> its fast tokenizer."""
    spec = spec or model_path
    if not spec:
        raise ValueError(f"config key 'condense.{which}_tokenizer' is empty and so is 'condense.{which}': "
                         f"name a tokenizer (a checkpoint dir, a hub id or demo:bpe:2048)")
    if spec.startswith("demo:"):
        from jaxft.tokenization.demo import demo_tokenizer

        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
            raise ValueError(f"config key 'condense.{which}_tokenizer'={spec!r}: expected demo:<kind>[:vocab_size]")
        return demo_tokenizer(parts[1], int(parts[2]) if len(parts) == 3 else None)
    from jaxft.tokenization import load_tokenizer as load_pretrained_tokenizer

    return load_pretrained_tokenizer(spec, use_fast=True)


def load_llm(path: str, init_hf: dict, tokenizer, dtype, rng: jax.Array, which: str
             ) -> tuple[DecoderConfig, dict[str, Any]]:
    """A checkpoint, or random weights from an HF-style config whose vocabulary is the tokenizer's."""
    from jaxft.checkpoint.hf import load_pretrained

    if path:
        cfg, params = load_pretrained(path, dtype=dtype)
    else:
        if not init_hf:
            raise ValueError(f"config key 'condense.{which}' is empty: give a checkpoint dir or hub id "
                             f"(or condense.{which}_init for random weights)")
        hf = dict(init_hf, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        cfg = DecoderConfig.from_hf(hf, source=f"config.condense.{which}_init")
        # initializer_range is the HF name of the init std; a larger one gives a random model
        # whose outputs react strongly to its inputs (what the demo's frozen decoder needs).
        params = init_llm(cfg, rng, dtype, std=float(init_hf.get("initializer_range", 0.02)))
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"condense.{which}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
                         f"only {cfg.vocab_size}")
    return cfg, params


def load_texts(data_cfg) -> list[str]:
    from jaxft.data import load_hf_dataset, read_records
    from jaxft.data.corpus import demo_corpus

    column = data_cfg.text_column
    if data_cfg.path:
        records = read_records(data_cfg.path, columns=(column,), on_error=data_cfg.on_error)
    elif data_cfg.hf_dataset:
        records = load_hf_dataset(data_cfg.hf_dataset, data_cfg.hf_split, (column,),
                                  config_name=data_cfg.hf_config or None, on_error=data_cfg.on_error)
    else:
        return demo_corpus()[: int(data_cfg.max_records) or None]
    texts = [r[column] for r in records]
    return texts[: int(data_cfg.max_records) or None]


def layout_from_config(k) -> Layout:
    return Layout.create(num_condense_tokens=int(k.num_condense_tokens), compression_ratio=float(k.compression_ratio),
                         max_tokens=int(k.max_tokens), max_decoder_tokens=int(k.max_decoder_tokens),
                         max_continuation_tokens=int(k.max_continuation_tokens),
                         max_characters=int(k.max_characters))


def group_fn(path: tuple[str, ...], leaf) -> str:
    """Each trainable part is its own optimizer group (its own learning rate)."""
    return path[0]


def no_decay(path: tuple[str, ...], leaf) -> bool:
    """Learned input embeddings (condense tokens, markers), biases and norms get no weight decay."""
    if path[0] in ("condense_tokens", "markers"):
        return True
    if path[0] == "decoder":
        return is_norm_bias_or_embedding(path)
    return path[-1] in ("bias", "scale") or len(getattr(leaf, "shape", ())) <= 1


def _quantize(params, cfg: DecoderConfig, fmt: str, which: str):
    if fmt in ("", "none"):
        return params
    if fmt not in ("nf4", "int8"):
        raise ValueError(f"config key 'condense.quantize_{which}'={fmt!r}: expected none, nf4 or int8")
    return lora_lib.quantize(params, cfg, fmt=fmt)


def build_parts(config) -> dict[str, Any]:
    """Models, tokenizers and the initial trees (no data), shared by ``build`` and tests."""
    k = config.condense
    dtype = jnp.dtype(k.dtype)
    rng = jax.random.PRNGKey(int(config.seed))
    k_enc, k_dec, k_lora, k_condense = jax.random.split(rng, 4)
    enc_tok = load_tokenizer(k.encoder_tokenizer, k.encoder, "encoder")
    dec_tok = load_tokenizer(k.decoder_tokenizer, k.decoder, "decoder")
    enc_cfg, enc_params = load_llm(k.encoder, k.encoder_init.to_dict(), enc_tok, dtype, k_enc, "encoder")
    dec_cfg, dec_params = load_llm(k.decoder, k.decoder_init.to_dict(), dec_tok, dtype, k_dec, "decoder")
    if k.encoder and not enc_cfg.tie_word_embeddings:
        enc_params = {key: value for key, value in enc_params.items() if key != "lm_head"}  # never read

    layout = layout_from_config(k)
    lk = k.lora
    adapters = lora_lib.init(k_lora, enc_cfg, enc_params, rank=int(lk.rank), alpha=float(lk.alpha),
                             targets=tuple(lk.targets), dropout=float(lk.dropout))
    train_decoder = bool(k.train_decoder)
    if train_decoder and k.quantize_decoder not in ("", "none"):
        raise ValueError("condense.train_decoder cannot train a quantized decoder; set condense.quantize_decoder=none")
    model = model_lib.CondenseModel(
        encoder=enc_cfg, decoder=dec_cfg, num_condense_tokens=layout.num_condense_tokens,
        segment_length=layout.segment_length, dtype=dtype, remat=str(k.remat), train_decoder=train_decoder,
        lora_config=adapters.config)
    embed_std = float(jnp.std(dec_params["model"]["embed_tokens"]["weight"].astype(jnp.float32)))
    trainable = {"lora": adapters.params, **model_lib.init_params(k_condense, model, embed_std)}
    frozen = {"encoder": _quantize(enc_params, enc_cfg, k.quantize_encoder, "encoder")}
    if train_decoder:
        trainable["decoder"] = dec_params
    else:
        frozen["decoder"] = _quantize(dec_params, dec_cfg, k.quantize_decoder, "decoder")
    return dict(model=model, layout=layout, trainable=trainable, frozen=frozen, encoder_tokenizer=enc_tok,
                decoder_tokenizer=dec_tok)


def pick_sample_text(texts: list[str], builder: ExampleBuilder, candidates: int = 200) -> str:
    """The first text that fills every segment (so the samples show all levels), else the one filling most."""
    best, best_segments = texts[0], 0
    for text in texts[:candidates]:
        segments = int(builder(text)["num_segments"])
        if segments == builder.layout.max_segments:
            return text
        if segments > best_segments:
            best, best_segments = text, segments
    return best


def build(config, mesh) -> TrainTask:
    from jaxft.data import make_batches, split_records
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser

    k = config.condense
    demo = not k.encoder and not k.decoder
    if demo and jax.process_index() == 0:
        print(demo_banner(bool(k.train_decoder)), flush=True)
    parts = build_parts(config)
    model, layout = parts["model"], parts["layout"]
    enc_tok, dec_tok = parts["encoder_tokenizer"], parts["decoder_tokenizer"]
    builder = ExampleBuilder(enc_tok, dec_tok, layout)

    texts = [t for t in load_texts(k.data) if t.strip()]
    if len(texts) < 2:
        raise ValueError(f"condense.data: {len(texts)} usable texts; need at least 2 (train and validation)")
    train, valid = split_records(texts, float(k.data.validation_fraction), int(config.seed))
    procs = jax.process_count()
    per_process = int(config.train.batch_size) // procs
    if per_process < 1:
        raise ValueError(f"config key 'train.batch_size'={config.train.batch_size} is smaller than the "
                         f"{procs} processes")
    batches = dict(example_fn=builder, fields=example_fields(layout), batch_size=per_process, num_threads=2)
    train_batches = make_batches(train, seed=int(config.seed), shuffle=True, num_epochs=None, **batches)
    eval_batches = (lambda: make_batches(valid, shuffle=False, num_epochs=1, **batches)) if valid else None

    def condenser_of(trainable, frozen) -> Condenser:
        return Condenser(model=model, layout=layout, trainable=trainable, frozen=frozen, encoder_tokenizer=enc_tok,
                         decoder_tokenizer=dec_tok)

    sample_text = pick_sample_text(valid or train, builder)
    max_new = int(k.samples.max_new_tokens)

    def samples_fn(trainable, frozen) -> dict[str, str]:
        return condenser_of(trainable, frozen).samples(sample_text, max_new_tokens=max_new)

    def export_fn(directory: str, trainable, frozen) -> None:
        export_condenser(directory, condenser_of(trainable, frozen), encoder_source=k.encoder,
                         decoder_source=k.decoder, quantize_encoder=k.quantize_encoder,
                         quantize_decoder=k.quantize_decoder)

    loss_fn = make_loss_fn(model, continuation_weight=float(k.continuation_weight),
                           chunk_size=int(config.loss.chunk_size))
    where = (f"encoder {k.encoder or 'random (condense.encoder_init)'}, "
             f"decoder {k.decoder or 'random (condense.decoder_init)'}")
    description = (f"condense: {where}; {layout.max_segments} segments x {layout.segment_length} tokens -> "
                   f"{layout.num_condense_tokens} condensed states each; LoRA r={k.lora.rank}; "
                   f"{len(train)} train / {len(valid)} validation texts")
    return TrainTask(
        trainable=parts["trainable"], frozen=parts["frozen"], loss_fn=loss_fn, train_batches=train_batches,
        group_fn=group_fn, no_decay=no_decay, eval_batches=eval_batches, samples_fn=samples_fn,
        export_fn=export_fn, tokens_key="enc_mask", description=description,
    )
