"""The model as the recipe runs it: history → prefix vector, then the LoRA'd LLM on [prefix, last turn].

``EmbedLLM`` holds everything static; parameters live in two trees:
``trainable = {"lora", "history", "perceiver"?}`` and ``frozen = {"llm", "perceiver"?}`` (the
Perceiver sits on the side its ``train`` switch puts it). ``history`` holds the input map, the
condenser, the output projection and the empty-history vector.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxft import lora as lora_lib
from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import embed, forward, lm_head
from jaxft.recipes.embedllm.model import CondenserConfig, HistoryEncoder, init_history_encoder
from jaxft.recipes.embedllm.perceiver import PerceiverEncoderConfig
from jaxft.train.lm import LM
from jaxft.train.loss import LossOutput

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EmbedLLM:
    llm: DecoderConfig
    perceiver: PerceiverEncoderConfig
    condenser: CondenserConfig
    lora_config: Any  # jaxft.lora.LoraConfig
    train_perceiver: bool
    dtype: Any = jnp.float32  # compute dtype of the LLM and the history encoder
    remat: str = "none"

    @property
    def encoder(self) -> HistoryEncoder:
        return HistoryEncoder(self.perceiver, self.condenser, self.llm.hidden_size)

    def encoder_params(self, trainable: Params, frozen: Params) -> Params:
        perceiver = trainable["perceiver"] if self.train_perceiver else frozen["perceiver"]
        return {**trainable["history"], "perceiver": perceiver}

    def llm_params(self, trainable: Params, frozen: Params, rng: jax.Array | None = None) -> Params:
        return lora_lib.apply(frozen["llm"], lora_lib.LoRA(trainable["lora"], self.lora_config), rng=rng)

    def lm(self, chunk_size: int | None = None) -> LM:
        """The LoRA'd LLM as the causal-LM kit scores it."""
        return LM(self.llm, lora_lib.Finetune(self.lora_config), dtype=self.dtype, remat=self.remat,
                  chunk_size=chunk_size)


def split_encoder_params(model: EmbedLLM, params: Params) -> tuple[Params, Params]:
    """History-encoder params -> (its trainable groups, its frozen groups)."""
    history = {k: v for k, v in params.items() if k != "perceiver"}
    if model.train_perceiver:
        return {"history": history, "perceiver": params["perceiver"]}, {}
    return {"history": history}, {"perceiver": params["perceiver"]}


def init_encoder(rng: jax.Array, model: EmbedLLM) -> Params:
    return init_history_encoder(rng, model.encoder)


def prefix_vectors(model: EmbedLLM, trainable: Params, frozen: Params, history_ids: jnp.ndarray,
                   history_mask: jnp.ndarray, rng: jax.Array | None = None) -> jnp.ndarray:
    """[B, H]: the prefix of each row's history ``history_ids`` [B, turns, tokens] (frozen LLM embeddings in)."""
    embeds = embed(model.llm, frozen["llm"], history_ids, model.dtype)
    kwargs = {} if rng is None else {"rngs": {"dropout": rng}}
    return model.encoder.apply({"params": model.encoder_params(trainable, frozen)}, embeds, history_mask,
                               deterministic=rng is None, **kwargs)


def decoder_embeds(model: EmbedLLM, llm_params: Params, input_ids: jnp.ndarray, prefix: jnp.ndarray) -> jnp.ndarray:
    """[B, T, H]: token embeddings of ``input_ids`` with slot 0 replaced by the prefix vector."""
    tokens = embed(model.llm, llm_params, input_ids, model.dtype)
    return tokens.at[:, 0].set(prefix.astype(tokens.dtype))


def _hidden(model: EmbedLLM, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None,
            zero_prefix: bool, drop_history: bool) -> tuple[Params, jnp.ndarray]:
    """(the LoRA'd LLM params, last hidden states [B, T, H]) of ``[prefix, last turn]`` rows."""
    rng_lora, rng_enc = (None, None) if rng is None else jax.random.split(rng)
    history_mask = jnp.zeros_like(batch["history_mask"]) if drop_history else batch["history_mask"]
    prefix = prefix_vectors(model, trainable, frozen, batch["history_ids"], history_mask, rng_enc)
    if zero_prefix:
        prefix = jnp.zeros_like(prefix)
    params = model.llm_params(trainable, frozen, rng_lora)
    x = decoder_embeds(model, params, batch["input_ids"], prefix)
    hidden, _ = forward(model.llm, params, attention_mask=batch["attention_mask"], inputs_embeds=x,
                        remat=model.remat, output="hidden", dtype=model.dtype)
    return params, hidden


def token_stats(model: EmbedLLM, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None = None,
                *, zero_prefix: bool = False, drop_history: bool = False, chunk_size: int | None = None) -> LossOutput:
    """Next-token cross-entropy sums over the last-turn tokens of ``batch`` (the prefix predicts the first).

    ``zero_prefix`` replaces the prefix vector by zeros; ``drop_history`` masks every history turn out
    (the prefix is then the learned empty-history vector).
    """
    params, hidden = _hidden(model, trainable, frozen, batch, rng, zero_prefix, drop_history)
    return model.lm(chunk_size).scores(params, hidden, batch)


def recall_sums(model: EmbedLLM, params: Params, hidden: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(rows whose answer token is the argmax of the slot before it, rows that have an answer token).

    ``answer_pos`` [B, 1] is the answer token's slot in ``input_ids`` (-1: none); greedy decoding
    of the last turn's opening would write that token.
    """
    pos = batch["answer_pos"][:, 0]
    has = pos > 0
    rows = jnp.arange(pos.shape[0])
    h = hidden[rows, jnp.maximum(pos - 1, 0)]
    logits = lm_head(model.llm, params, h[:, None, :])[:, 0]
    right = (jnp.argmax(logits, axis=-1) == batch["input_ids"][rows, jnp.maximum(pos, 0)]) & has
    return right.sum().astype(jnp.float32), has.sum().astype(jnp.float32)


def eval_sums(model: EmbedLLM, trainable: Params, frozen: Params, batch: dict, chunk_size: int | None = None,
              recall: bool = True) -> dict[str, jnp.ndarray]:
    """Loss, token accuracy and (with ``recall``: the data marks answer tokens) answer recall with the prefix,
    with the prefix zeroed, and without history (the empty-history vector), and the loss gap to the zeroed
    prefix (all as sums + counts)."""
    out = {}
    for name, zero, drop in (("", False, False), ("zero_prefix_", True, False), ("no_history_", False, True)):
        params, hidden = _hidden(model, trainable, frozen, batch, None, zero, drop)
        stats = model.lm(chunk_size).scores(params, hidden, batch)
        out.update({f"{name}loss": stats.loss_sum, f"{name}loss_count": stats.weight_sum,
                    f"{name}accuracy": stats.correct, f"{name}accuracy_count": stats.count})
        if recall:
            out[f"{name}recall"], out[f"{name}recall_count"] = recall_sums(model, params, hidden, batch)
    out.update(prefix_gain=out["zero_prefix_loss"] - out["loss"], prefix_gain_count=out["loss_count"])
    return out


@functools.partial(jax.jit, static_argnums=0)
def prefix_jit(model: EmbedLLM, trainable: Params, frozen: Params, history_ids, history_mask):
    return prefix_vectors(model, trainable, frozen, history_ids, history_mask)


@functools.partial(jax.jit, static_argnums=0)
def logits_jit(model: EmbedLLM, trainable: Params, frozen: Params, input_ids, attention_mask, history_ids,
               history_mask):
    """[B, T, vocab] float32 logits of ``[prefix, last turn]`` rows (no dropout)."""
    prefix = prefix_vectors(model, trainable, frozen, history_ids, history_mask)
    params = model.llm_params(trainable, frozen)
    x = decoder_embeds(model, params, input_ids, prefix)
    logits, _ = forward(model.llm, params, attention_mask=attention_mask, inputs_embeds=x, dtype=model.dtype)
    return logits

