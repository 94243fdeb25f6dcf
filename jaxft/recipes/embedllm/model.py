"""History -> one prefix vector: LLM embeddings → linear → Perceiver IO → one-query condenser → linear.

Each history turn's token embeddings (from the frozen LLM table) are mapped to
the Perceiver's input width and encoded into latents on their own. One learned
query then attends over the latents of all turns of the conversation (absent
turns masked), ``LayerNorm(attention + query)`` and a linear map give one
vector of the LLM's hidden size: the prefix the LLM reads before the last turn.
A conversation without history gets a learned "empty history" vector instead.

Parameter tree (``HistoryEncoder``): ``input_projection``, ``perceiver``
(transformers' PerceiverModel names, see ``jaxft.recipes.embedllm.perceiver``),
``compressor`` (``query``, ``attention.{q,k,v,out}_proj``, ``layer_norm``),
``projection``, ``empty_history``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxft.recipes.embedllm.perceiver import LayerNorm, Linear, PerceiverEncoderConfig, PerceiverModel

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CondenserConfig:
    num_heads: int = 8
    dropout: float = 0.1


class Compressor(nn.Module):
    """One learned query attends over ``latents`` [B, K, D] (``mask`` [B, K], 1 = real): [B, D].

    Multi-head attention (dropout on the attention weights), then LayerNorm(attention + query),
    then dropout -- torch's ``nn.MultiheadAttention`` semantics as the reference used them.
    """

    config: CondenserConfig

    @nn.compact
    def __call__(self, latents, mask, deterministic: bool = True):
        b, _, d = latents.shape
        heads = self.config.num_heads
        if d % heads:
            raise ValueError(f"embedllm: latent width {d} is not divisible by the condenser's {heads} heads")
        query = self.param("query", nn.initializers.normal(1.0), (d,), jnp.float32)
        attn = _Attention(heads, self.config.dropout, name="attention")
        out = attn(jnp.broadcast_to(query.astype(latents.dtype), (b, 1, d)), latents, mask, deterministic)
        out = LayerNorm(name="layer_norm")(out[:, 0] + query.astype(out.dtype))
        return nn.Dropout(self.config.dropout)(out, deterministic=deterministic)


class _Attention(nn.Module):
    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, queries, keys, mask, deterministic: bool):
        b, tq, d = queries.shape
        tk, hd = keys.shape[1], d // self.num_heads
        q = Linear(d, name="q_proj")(queries).reshape(b, tq, self.num_heads, hd)
        k = Linear(d, name="k_proj")(keys).reshape(b, tk, self.num_heads, hd)
        v = Linear(d, name="v_proj")(keys).reshape(b, tk, self.num_heads, hd)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
        scores = jnp.where(mask.astype(bool)[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = nn.Dropout(self.dropout)(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return Linear(d, name="out_proj")(out.astype(v.dtype).reshape(b, tq, d))


class HistoryEncoder(nn.Module):
    """``embeds`` [B, T, L, H_llm] of the history turns (``mask`` [B, T, L]) -> prefix [B, H_llm]."""

    perceiver: PerceiverEncoderConfig
    condenser: CondenserConfig
    llm_hidden_size: int

    @nn.compact
    def __call__(self, embeds, mask, deterministic: bool = True):
        b, t, length, _ = embeds.shape
        mask = mask.astype(bool)
        x = Linear(self.perceiver.d_model, name="input_projection")(embeds.reshape(b * t, length, -1))
        latents = PerceiverModel(self.perceiver, name="perceiver")(x, mask.reshape(b * t, length), deterministic)
        n, d = latents.shape[1], latents.shape[2]
        turn_valid = mask.any(axis=-1)  # [B, T]
        latent_mask = jnp.repeat(turn_valid, n, axis=1)  # every latent of a present turn
        condensed = Compressor(self.condenser, name="compressor")(latents.reshape(b, t * n, d), latent_mask,
                                                                  deterministic)
        prefix = Linear(self.llm_hidden_size, name="projection")(condensed)
        empty = self.param("empty_history", nn.initializers.normal(0.02), (self.llm_hidden_size,), jnp.float32)
        has_history = turn_valid.any(axis=-1, keepdims=True)
        return jnp.where(has_history, prefix, empty.astype(prefix.dtype))


def init_history_encoder(rng: jax.Array, module: HistoryEncoder) -> Params:
    dummy = jnp.zeros((1, 1, 2, module.llm_hidden_size), jnp.float32)
    return module.init(rng, dummy, jnp.ones((1, 1, 2), bool))["params"]
