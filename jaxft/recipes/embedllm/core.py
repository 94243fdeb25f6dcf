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
from jaxft.models.decoder import embed, forward
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


def token_stats(model: EmbedLLM, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None = None,
                *, zero_prefix: bool = False, drop_history: bool = False, chunk_size: int | None = None) -> LossOutput:
    """Next-token cross-entropy sums over the last-turn tokens of ``batch`` (the prefix predicts the first).

    ``zero_prefix`` replaces the prefix vector by zeros; ``drop_history`` masks every history turn out
    (the prefix is then the learned empty-history vector).
    """
    rng_lora, rng_enc = (None, None) if rng is None else jax.random.split(rng)
    history_mask = jnp.zeros_like(batch["history_mask"]) if drop_history else batch["history_mask"]
    prefix = prefix_vectors(model, trainable, frozen, batch["history_ids"], history_mask, rng_enc)
    if zero_prefix:
        prefix = jnp.zeros_like(prefix)
    params = model.llm_params(trainable, frozen, rng_lora)
    x = decoder_embeds(model, params, batch["input_ids"], prefix)
    hidden, _ = forward(model.llm, params, attention_mask=batch["attention_mask"], inputs_embeds=x,
                        remat=model.remat, output="hidden", dtype=model.dtype)
    return model.lm(chunk_size).scores(params, hidden, batch)


def eval_sums(model: EmbedLLM, trainable: Params, frozen: Params, batch: dict,
              chunk_size: int | None = None) -> dict[str, jnp.ndarray]:
    """Loss and accuracy with the prefix, with the prefix zeroed, and without history (the empty-history
    vector), and the loss gap to the zeroed prefix (all as sums + counts)."""
    real = token_stats(model, trainable, frozen, batch, chunk_size=chunk_size)
    zero = token_stats(model, trainable, frozen, batch, zero_prefix=True, chunk_size=chunk_size)
    empty = token_stats(model, trainable, frozen, batch, drop_history=True, chunk_size=chunk_size)
    return {"no_history_loss": empty.loss_sum, "no_history_loss_count": empty.weight_sum,
            "no_history_accuracy": empty.correct, "no_history_accuracy_count": empty.count,
            "loss": real.loss_sum, "loss_count": real.weight_sum,
            "accuracy": real.correct, "accuracy_count": real.count,
            "zero_prefix_loss": zero.loss_sum, "zero_prefix_loss_count": zero.weight_sum,
            "zero_prefix_accuracy": zero.correct, "zero_prefix_accuracy_count": zero.count,
            "prefix_gain": zero.loss_sum - real.loss_sum, "prefix_gain_count": real.weight_sum}


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

