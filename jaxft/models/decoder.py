"""The decoder: one functional implementation for Llama, Mistral, Qwen2 and Qwen3.

Parameters are a plain nested dict whose paths follow the Hugging Face names
(see ``jaxft/checkpoint/hf_names.py`` for the exact mapping); the layers are
stacked on a leading axis and run with ``lax.scan``, so compile time does not
grow with depth. Kernels are stored [in, out] and multiplied through
``layers.dense``, which is where LoRA and quantized weights plug in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxft.models import layers
from jaxft.models.attention import AttentionMask, attention
from jaxft.models.config import DecoderConfig
from jaxft.models.rope import apply_rope, inverse_frequencies

Params = dict[str, Any]
RematPolicy = Literal["none", "full", "save_dots"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Preallocated keys/values for all layers, filled slot by slot.

    All rows of a batch write the same slots; ``lengths`` counts each row's real
    tokens so positions stay right for left-padded prompts.
    """

    k: jnp.ndarray  # [layers, batch, max_len, kv_heads, head_dim]
    v: jnp.ndarray
    positions: jnp.ndarray  # [batch, max_len] int32
    valid: jnp.ndarray  # [batch, max_len] bool
    index: jnp.ndarray  # [] int32, next slot to write
    lengths: jnp.ndarray  # [batch] int32, real tokens so far

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        positions=jnp.zeros((batch, max_len), jnp.int32),
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
    )


def _remat(fn, policy: RematPolicy):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    if policy == "save_dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"remat policy '{policy}' is not one of none, full, save_dots")


def _attention_block(cfg, p, x, mask, positions, inv_freq, cache_kv, index):
    b, t, _ = x.shape
    h = layers.rms_norm(x, p["input_layernorm"]["weight"], cfg.rms_norm_eps)
    a = p["self_attn"]

    def proj(name, heads):
        y = layers.dense(h, a[name]["kernel"], a[name].get("bias"))
        return y.reshape(b, t, heads, cfg.head_dim)

    q = proj("q_proj", cfg.num_attention_heads)
    k = proj("k_proj", cfg.num_key_value_heads)
    v = proj("v_proj", cfg.num_key_value_heads)
    if cfg.qk_norm:
        q = layers.rms_norm(q, a["q_norm"]["weight"], cfg.rms_norm_eps)
        k = layers.rms_norm(k, a["k_norm"]["weight"], cfg.rms_norm_eps)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    if cache_kv is not None:
        ck, cv = cache_kv
        k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
        cache_kv = (k, v)
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    o = attention(q, k, v, mask).reshape(b, t, cfg.q_size)
    x = x + layers.dense(o, a["o_proj"]["kernel"], a["o_proj"].get("bias"))
    return x, cache_kv


def _mlp_block(cfg, p, x):
    h = layers.rms_norm(x, p["post_attention_layernorm"]["weight"], cfg.rms_norm_eps)
    m = p["mlp"]
    gate = layers.dense(h, m["gate_proj"]["kernel"], m["gate_proj"].get("bias"))
    up = layers.dense(h, m["up_proj"]["kernel"], m["up_proj"].get("bias"))
    return x + layers.dense(jax.nn.silu(gate) * up, m["down_proj"]["kernel"], m["down_proj"].get("bias"))


def embed(cfg: DecoderConfig, params: Params, input_ids: jnp.ndarray, dtype=None) -> jnp.ndarray:
    table = params["model"]["embed_tokens"]["weight"]
    return jnp.take(table, input_ids, axis=0).astype(dtype or table.dtype)


def lm_head(cfg: DecoderConfig, params: Params, hidden: jnp.ndarray) -> jnp.ndarray:
    """Project final hidden states to float32 logits over the vocabulary."""
    if cfg.tie_word_embeddings:
        table = params["model"]["embed_tokens"]["weight"]
        return jnp.einsum("...h,vh->...v", hidden, table.astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
    kernel = params["lm_head"]["kernel"]
    w = layers.materialize(kernel, hidden.dtype)
    return jnp.einsum("...h,hv->...v", hidden, w, preferred_element_type=jnp.float32)


def lm_head_weight(cfg: DecoderConfig, params: Params, dtype) -> jnp.ndarray:
    """The output projection as [hidden, vocab], for losses that chunk the vocabulary."""
    if cfg.tie_word_embeddings:
        return params["model"]["embed_tokens"]["weight"].astype(dtype).T
    return layers.materialize(params["lm_head"]["kernel"], dtype)


def positions_from_mask(attention_mask: jnp.ndarray, offset: jnp.ndarray | int = 0) -> jnp.ndarray:
    """Positions counting only real tokens, so left padding does not shift them."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0) + (offset[:, None] if isinstance(offset, jax.Array) else offset)


def forward(
    cfg: DecoderConfig,
    params: Params,
    input_ids: jnp.ndarray | None = None,
    attention_mask: jnp.ndarray | None = None,
    position_ids: jnp.ndarray | None = None,
    *,
    inputs_embeds: jnp.ndarray | None = None,
    cache: KVCache | None = None,
    remat: RematPolicy = "none",
    output: Literal["logits", "hidden"] = "logits",
    dtype=None,
    segment_ids: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, KVCache | None]:
    """Run the decoder.

    Returns ``(logits [b, t, vocab] float32, cache)`` or, with ``output="hidden"``,
    the final-norm hidden states [b, t, hidden] (what HF calls the last hidden
    state) instead of logits. With ``cache`` the new tokens are written at
    ``cache.index`` and attend to everything cached before them. ``segment_ids``
    (with per-segment ``position_ids``) keeps packed sequences from seeing each other.
    """
    if inputs_embeds is None:
        x = embed(cfg, params, input_ids, dtype)
    else:
        x = inputs_embeds.astype(dtype or inputs_embeds.dtype)
    b, t, _ = x.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), bool)
    attention_mask = attention_mask.astype(bool)

    if cache is None:
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        slots = jnp.broadcast_to(jnp.arange(t), (b, t))
        mask = AttentionMask(slots, attention_mask, position_ids, position_ids, cfg.sliding_window,
                             segment_ids=segment_ids)
        index = None
    else:
        if segment_ids is not None:
            raise ValueError("segment_ids (packed rows) cannot be used with a KV cache")
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, cache.lengths)
        index = cache.index
        kv_positions = jax.lax.dynamic_update_slice(cache.positions, position_ids.astype(jnp.int32), (0, index))
        kv_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, index))
        slots = jnp.broadcast_to(index + jnp.arange(t), (b, t))
        mask = AttentionMask(slots, kv_valid, position_ids, kv_positions, cfg.sliding_window, has_cache=True)
    inv_freq = inverse_frequencies(cfg)

    def body(x, xs):
        layer_params, cache_kv = xs
        x, cache_kv = _attention_block(cfg, layer_params, x, mask, position_ids, inv_freq, cache_kv, index)
        x = _mlp_block(cfg, layer_params, x)
        return x, cache_kv

    layer_xs = (params["model"]["layers"], None if cache is None else (cache.k, cache.v))
    x, new_kv = jax.lax.scan(_remat(body, remat), x, layer_xs)
    hidden = layers.rms_norm(x, params["model"]["norm"]["weight"], cfg.rms_norm_eps)

    if cache is not None:
        cache = KVCache(
            k=new_kv[0], v=new_kv[1], positions=mask.kv_positions, valid=mask.kv_valid,
            index=cache.index + t, lengths=cache.lengths + attention_mask.sum(-1).astype(jnp.int32),
        )
    if output == "hidden":
        return hidden, cache
    return lm_head(cfg, params, hidden), cache
