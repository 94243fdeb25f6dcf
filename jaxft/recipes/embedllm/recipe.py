"""``build(config, placement)``: the embedllm TrainTask (LoRA on the LLM + history encoder, loss on the last turn)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxft import lora as lora_lib
from jaxft.loaders import load_model
from jaxft.recipes.embedllm.core import EmbedLLM, eval_sums, init_encoder, split_encoder_params, token_stats
from jaxft.recipes.embedllm.data import (ExampleBuilder, Layout, history_fields, parse_conversations,
                                         read_conversations)
from jaxft.recipes.embedllm.export import EmbedChat, export_embedllm, load_embedllm
from jaxft.recipes.embedllm.model import CondenserConfig
from jaxft.recipes.embedllm.perceiver import TORCH_WEIGHTS, PerceiverEncoderConfig, load_perceiver
from jaxft.train.lm import GlobalBatches
from jaxft.train.task import TrainTask, data_fingerprint

log = logging.getLogger("jaxft")


def perceiver_config(section) -> PerceiverEncoderConfig:
    """``embedllm.perceiver`` shape keys -> the encoder config of a randomly initialised Perceiver."""
    return PerceiverEncoderConfig(
        num_latents=int(section.num_latents), d_latents=int(section.latent_dim), d_model=int(section.input_dim),
        num_blocks=int(section.num_blocks), num_self_attends_per_block=int(section.self_attends_per_block),
        num_self_attention_heads=int(section.self_attention_heads),
        num_cross_attention_heads=int(section.cross_attention_heads),
        self_attention_widening_factor=int(section.self_attention_widening_factor),
        cross_attention_widening_factor=int(section.cross_attention_widening_factor),
        attention_probs_dropout_prob=float(section.dropout))


def load_perceiver_params(section) -> tuple[PerceiverEncoderConfig, dict | None]:
    """(config, params) of ``embedllm.perceiver.path`` (a directory or hub id), or (config, None) for random init."""
    if not section.path:
        return perceiver_config(section), None
    from jaxft.checkpoint.hf import resolve

    # the hub's deepmind/multimodal-perceiver has PyTorch weights only
    cfg, params = load_perceiver(resolve(section.path, extra_patterns=(TORCH_WEIGHTS,)))
    if cfg.d_latents != int(section.latent_dim):
        raise ValueError(f"config key 'embedllm.perceiver.latent_dim'={section.latent_dim}: the checkpoint "
                         f"{section.path} has d_latents {cfg.d_latents}")
    return cfg, params


def conversation_texts(config, tokenizer) -> tuple[list[str], str, object]:
    """(the configured conversations, where they came from, the answer-token rule of a recall metric or None).

    Configured data is ``config.data`` read by ``read_conversations``; without it, the generated demo
    conversations, whose recalled word is the answer token.
    """
    e = config.embedllm
    texts, origin = read_conversations(config.data, e.separator)
    if origin:
        return texts, origin, None
    from jaxft.recipes.embedllm.demo import answer_index, demo_conversations, fact_words

    words = fact_words(tokenizer, int(e.demo.num_words))
    texts = demo_conversations(tokenizer, int(e.demo.conversations), seed=int(config.seed), separator=e.separator,
                               words=words)
    return texts, f"{len(texts)} generated conversations (recall a word stated in an earlier turn)", \
        answer_index(tokenizer, words)


def layout_of(section) -> Layout:
    """The example layout the ``embedllm`` config section sets."""
    return Layout(max_turns=int(section.max_turns), max_conversation_tokens=int(section.max_conversation_tokens),
                  max_last_turn_tokens=int(section.max_last_turn_tokens), separator=section.separator,
                  append_eos=bool(section.append_eos))


def _model(config, llm_cfg, llm_params, pcfg):
    """(the EmbedLLM, its LoRA adapters, the frozen LLM tree) of the configured LLM."""
    e, lcfg = config.embedllm, config.lora
    if int(lcfg.rank) == 0:
        raise ValueError("config key 'lora.rank'=0: embedllm trains LoRA adapters on the LLM (rank >= 1)")
    adapters, frozen_llm, tuning = lora_lib.finetune_trees(jax.random.PRNGKey(config.seed + 1), llm_cfg, llm_params,
                                                          lcfg)
    model = EmbedLLM(llm=llm_cfg, perceiver=pcfg,
                     condenser=CondenserConfig(num_heads=int(e.condenser_heads), dropout=float(e.condenser_dropout)),
                     lora_config=tuning.lora_config, train_perceiver=bool(e.perceiver.train),
                     dtype=jnp.dtype(config.model.compute_dtype), remat=str(config.model.remat))
    return model, adapters, frozen_llm


def _examples(config, tokenizer, layout):
    """(train examples, validation examples, validation texts with a history, builder, origin)."""
    from jaxft.data import split_records

    texts, origin, answer_fn = conversation_texts(config, tokenizer)
    conversations, stats = parse_conversations(texts, layout.separator)
    builder = ExampleBuilder(tokenizer, layout, stats, answer_fn=answer_fn)
    examples = [builder.tokenize(turns) for turns in conversations]  # up front, so the summary counts every cut
    log.info("embedllm data: %s", stats)
    if len(examples) < 2:
        raise ValueError(f"data: only {len(examples)} usable conversations in {origin} ({stats})")
    train, valid = split_records(list(range(len(examples))), float(config.data.validation_fraction),
                                 int(config.seed))
    # samples come from the held-out split: conversations with a history, as the separator joins them
    held_out = [layout.separator.join(conversations[i]) for i in valid if len(conversations[i]) > 1]
    return [examples[i] for i in train], [examples[i] for i in valid], held_out, builder, origin


def build(config, placement) -> TrainTask:
    e = config.embedllm
    llm_cfg, llm_params, tokenizer = load_model(config.model, config.seed, placement=placement)
    layout = layout_of(e)
    pcfg, perceiver_params = load_perceiver_params(e.perceiver)
    model, adapters, frozen_llm = _model(config, llm_cfg, llm_params, pcfg)
    encoder = init_encoder(jax.random.PRNGKey(config.seed + 2), model)
    if perceiver_params is not None:
        encoder["perceiver"] = perceiver_params
    trainable, frozen = split_encoder_params(model, encoder)
    trainable["lora"] = adapters["lora"]
    frozen["llm"] = frozen_llm["base"]

    train, valid, held_out, builder, origin = _examples(config, tokenizer, layout)
    batches = GlobalBatches.of(config, example_fn=builder.arrays, seq_len=layout.seq_len,
                               fields=history_fields(layout, builder.pad_id))
    chunk = int(config.loss.chunk_size) or None

    def loss_fn(trainable, frozen, batch, rng):
        out = token_stats(model, trainable, frozen, batch, rng, chunk_size=chunk)
        return out.loss_sum, out.weight_sum, {"accuracy": out.correct, "accuracy_count": out.count}

    def eval_fn(trainable, frozen, batch):
        return eval_sums(model, trainable, frozen, batch, chunk_size=chunk, recall=builder.answer_fn is not None)

    sample_texts = held_out[:int(e.sample.count)]

    def samples_fn(trainable, frozen):
        chat = EmbedChat(model, layout, trainable, frozen, tokenizer)
        # the history and the last turn's opening words; the model writes the rest of the turn
        prompts = [_open_last_turn(t, layout.separator, int(e.sample.prompt_words)) for t in sample_texts]
        replies = chat.reply(prompts, max_new_tokens=int(e.sample.max_new_tokens))
        return {f"sample_{i}": f"{p} ⟶ {r}" for i, (p, r) in enumerate(zip(prompts, replies))}

    def export_fn(directory, trainable, frozen):
        chat = EmbedChat(model, layout, jax.tree.map(jnp.asarray, trainable), jax.tree.map(jnp.asarray, frozen),
                         tokenizer)
        export_embedllm(directory, chat, llm_source=config.model.path, quantize=str(config.model.quantize))

    where = config.model.path or "a randomly initialised LLM (config.model.random_init)"
    perceiver = e.perceiver.path or "a random Perceiver"
    return TrainTask(
        trainable=trainable, frozen=frozen, loss_fn=loss_fn, train_batches=batches.train(train),
        eval_batches=batches.eval(valid), train_records=len(train),
        eval_fn=eval_fn, samples_fn=samples_fn if sample_texts else None, export_fn=export_fn,
        data_fingerprint=data_fingerprint(config.data),
        no_decay=lambda path, leaf: False,  # AdamW decays every parameter, as torch's AdamW did in the reference
        description=(f"embedllm: LoRA r={config.lora.rank} on {where}; {perceiver} ({pcfg.num_latents}x"
                     f"{pcfg.d_latents}, {'trained' if model.train_perceiver else 'frozen'}) over up to "
                     f"{layout.max_turns} earlier turns within {layout.max_conversation_tokens} tokens; {origin}; "
                     f"{len(train)} train / {len(valid)} validation conversations"),
    )


def _open_last_turn(text: str, separator: str, words: int) -> str:
    *history, last = text.split(separator)
    return separator.join(history + [" ".join(last.split()[:words])])


def load_export(directory: str) -> EmbedChat:
    """The model an embedllm export holds (raises naming what is missing or broken)."""
    return load_embedllm(Path(directory))
