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
import numpy as np

from jaxft.models import layers
from jaxft.models.attention import AttentionMask, attention
from jaxft.models.config import DecoderConfig
from jaxft.models.rope import apply_rope, inverse_frequencies
from jaxft.models.sharding_hints import constrain_batch

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


def _norm(cfg, p, x):
    """The block's normalisation: RMSNorm (Llama family) or LayerNorm with a bias (minigpt)."""
    if cfg.norm_type == "layer_norm":
        return layers.layer_norm(x, p["weight"], p["bias"], cfg.layer_norm_eps)
    return layers.rms_norm(x, p["weight"], cfg.rms_norm_eps)


def _dropout(x, rate: float, key):
    """Inverted dropout; ``key`` None (evaluation, sampling) leaves ``x`` unchanged."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _attention_with_dropout(q, k, v, mask, rate, key):
    """Softmax attention with dropout on the probabilities (training only; plain XLA on every backend)."""
    b, t, h, d = q.shape
    kv_h = k.shape[2]
    q = q.reshape(b, t, kv_h, h // kv_h, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    scores = jnp.where(mask.dense()[:, None, None], scores, -1e30)
    probs = _dropout(jax.nn.softmax(scores, axis=-1), rate, key).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)


def sinusoidal_positions(positions: jnp.ndarray, dim: int) -> jnp.ndarray:
    """Fixed sin/cos position vectors [..., dim]: sin in even, cos in odd channels, 10000^(i/dim) wavelengths."""
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    angles = positions.astype(jnp.float32)[..., None] / jnp.asarray(10000.0 ** exponents, jnp.float32)
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, -1)[..., :dim]


def _attention_block(cfg, p, x, mask, positions, inv_freq, cache_kv, index, keys=None, residual=True):
    """``x + Attn(norm x)``; with ``residual=False`` only the attention branch (parallel blocks).

    ``keys`` (two PRNG keys) switches dropout on for the probabilities and the output.
    """
    x = constrain_batch(x)  # every layer loop passes here: keep the residual stream split by rows under FSDP
    b, t, _ = x.shape
    h = _norm(cfg, p["input_layernorm"], x)
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
    if cfg.position_embedding == "rope":
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
    if cache_kv is not None:
        ck, cv = cache_kv
        k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
        cache_kv = (k, v)
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    if keys is not None and cfg.dropout > 0:
        o = _attention_with_dropout(q, k, v, mask, cfg.dropout, keys[0])
    else:
        o = attention(q, k, v, mask)
    o = layers.dense(o.reshape(b, t, cfg.q_size), a["o_proj"]["kernel"], a["o_proj"].get("bias"))
    o = _dropout(o, cfg.dropout, None if keys is None else keys[1])
    return (x + o if residual else o), cache_kv


def _mlp_block(cfg, p, x, key=None, residual=True):
    h = _norm(cfg, p["post_attention_layernorm"], x)
    m = p["mlp"]
    gate = layers.dense(h, m["gate_proj"]["kernel"], m["gate_proj"].get("bias"))
    up = layers.dense(h, m["up_proj"]["kernel"], m["up_proj"].get("bias"))
    y = layers.dense(jax.nn.silu(gate) * up, m["down_proj"]["kernel"], m["down_proj"].get("bias"))
    y = _dropout(y, cfg.dropout, key)
    return x + y if residual else y


def embed(cfg: DecoderConfig, params: Params, input_ids: jnp.ndarray, dtype=None) -> jnp.ndarray:
    table = params["model"]["embed_tokens"]["weight"]
    return jnp.take(table, input_ids, axis=0).astype(dtype or table.dtype)


def lm_head(cfg: DecoderConfig, params: Params, hidden: jnp.ndarray) -> jnp.ndarray:
    """Project final hidden states to float32 logits (float64 for float64 hidden states)."""
    acc = layers.accumulation_dtype(hidden.dtype)
    if cfg.tie_word_embeddings:
        table = params["model"]["embed_tokens"]["weight"]
        return jnp.einsum("...h,vh->...v", hidden, table.astype(hidden.dtype), preferred_element_type=acc)
    kernel = params["lm_head"]["kernel"]
    w = layers.materialize(kernel, hidden.dtype)
    return jnp.einsum("...h,hv->...v", hidden, w, preferred_element_type=acc)


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
    dropout_rng: jax.Array | None = None,
) -> tuple[jnp.ndarray, KVCache | None]:
    """Run the decoder.

    Returns ``(logits [b, t, vocab] float32, cache)`` or, with ``output="hidden"``,
    the final-norm hidden states [b, t, hidden] (what HF calls the last hidden
    state) instead of logits. With ``cache`` the new tokens are written at
    ``cache.index`` and attend to everything cached before them. ``segment_ids``
    (with per-segment ``position_ids``) keeps packed sequences from seeing each other.
    ``dropout_rng`` turns on ``cfg.dropout`` (training); without it the model is deterministic.
    """
    if inputs_embeds is None:
        x = embed(cfg, params, input_ids, dtype)
        if cfg.embedding_multiplier != 1.0:
            x = x * jnp.asarray(cfg.embedding_multiplier, x.dtype)
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
    if cfg.position_embedding == "sinusoidal":
        x = x + sinusoidal_positions(position_ids, cfg.hidden_size).astype(x.dtype)
    train = dropout_rng is not None and cfg.dropout > 0
    if train:
        dropout_rng, embed_key = jax.random.split(dropout_rng)
        x = _dropout(x, cfg.dropout, embed_key)

    def body(x, xs):
        layer_params, cache_kv, key = xs
        keys = None if key is None else jax.random.split(key, 3)
        attn_keys = None if keys is None else keys[:2]
        mlp_key = None if keys is None else keys[2]
        if cfg.parallel_residual:
            a, cache_kv = _attention_block(cfg, layer_params, x, mask, position_ids, inv_freq, cache_kv, index,
                                           attn_keys, residual=False)
            return x + a + _mlp_block(cfg, layer_params, x, mlp_key, residual=False), cache_kv
        x, cache_kv = _attention_block(cfg, layer_params, x, mask, position_ids, inv_freq, cache_kv, index,
                                       attn_keys)
        x = _mlp_block(cfg, layer_params, x, mlp_key)
        return x, cache_kv

    layer_keys = jax.random.split(dropout_rng, cfg.num_hidden_layers) if train else None
    layer_xs = (params["model"]["layers"], None if cache is None else (cache.k, cache.v), layer_keys)
    x, new_kv = jax.lax.scan(_remat(body, remat), x, layer_xs)
    hidden = _norm(cfg, params["model"]["norm"], x)

    if cache is not None:
        cache = KVCache(
            k=new_kv[0], v=new_kv[1], positions=mask.kv_positions, valid=mask.kv_valid,
            index=cache.index + t, lengths=cache.lengths + attention_mask.sum(-1).astype(jnp.int32),
        )
    if output == "hidden":
        return hidden, cache
    return lm_head(cfg, params, hidden), cache
