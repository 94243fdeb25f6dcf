"""The decoder's functional surface: ``forward(cfg, params, ...)`` over a plain parameter tree.

The implementation is the ``flax.linen`` module ``CausalLM`` in ``jaxft/models/modules.py``;
these functions apply it (or one of its parts) to a parameter dict whose paths follow
the Hugging Face names (see ``jaxft/checkpoint/hf_names.py``), so recipes, the train
step and the sampler keep passing pytrees around. Kernels are stored [in, out] and
multiplied through ``layers.dense``, which is where LoRA and quantized weights plug in.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxft.models.attention import AttentionMask
from jaxft.models.config import DecoderConfig
from jaxft.models.sharding_hints import constrain_batch
from jaxft.models.rope import inverse_frequencies  # noqa: F401  (re-exported for the block-level tests)
from jaxft.models.modules import (Block, CausalLM, KVCache, RematPolicy, _block_norm, positions_from_mask,
                                  remat_policy, sinusoidal_positions)
from jaxft.models.modules import dropout as _dropout  # noqa: F401  (the block-level tests call it)

Params = dict[str, Any]

__all__ = ["KVCache", "init_cache", "forward", "unstack_layers", "embed", "lm_head", "lm_head_weight",
           "positions_from_mask", "sinusoidal_positions", "RematPolicy", "AttentionMask", "inverse_frequencies"]


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype=jnp.float32, *,
               per_layer: bool = False) -> KVCache:
    """An empty cache; ``per_layer=True`` for parameters in the decode layout (``unstack_layers``)."""
    k_shape = (batch * cfg.num_key_value_heads, max_len, cfg.head_dim)  # the layouts attention reads (KVCache)
    v_shape = (batch * cfg.num_key_value_heads, cfg.head_dim, max_len)
    layers = cfg.num_hidden_layers
    if per_layer:
        k = tuple(jnp.zeros(k_shape, dtype) for _ in range(layers))
        v = tuple(jnp.zeros(v_shape, dtype) for _ in range(layers))
    else:
        k, v = jnp.zeros((layers, *k_shape), dtype), jnp.zeros((layers, *v_shape), dtype)
    return KVCache(
        k=k,
        v=v,
        positions=jnp.zeros((batch, max_len), jnp.int32),
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
    )


def unstack_layers(params: Params) -> Params:
    """``params`` in the decode layout: ``model.layers`` (stacked on axis 0) split into ``layers_0`` ...

    ``forward`` recognises the layout and runs the layers unrolled, each reading its own weights in
    place (see ``DecoderModel``). LoRA and quantized kernels split like plain ones (every leaf keeps the
    layer axis first). Inside a jitted function the split is one copy of the weights per call, so code
    that generates many times (an inference server, an evaluation loop) keeps its parameters split
    once; parameters already in this layout are returned as they are.
    """
    if "layers" not in params["model"]:
        return params
    model = dict(params["model"])
    stacked = model.pop("layers")
    count = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(count):
        model[f"layers_{i}"] = jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
    return {**params, "model": model}


def _model(cfg: DecoderConfig, params: Params, remat: RematPolicy = "none", remat_group: int = 1) -> CausalLM:
    """The module for ``params``' layout: stacked (scanned) or unstacked (``unstack_layers``)."""
    return CausalLM(cfg, remat, unroll="layers_0" in params.get("model", {}), remat_group=remat_group)


def _remat(fn, policy: RematPolicy):
    """``fn`` under ``jax.checkpoint`` with the named policy (for scans written outside the modules)."""
    enabled, saveable = remat_policy(policy)
    return jax.checkpoint(fn, policy=saveable) if enabled else fn


def _norm(cfg: DecoderConfig, p: Params, x: jnp.ndarray) -> jnp.ndarray:
    """The block's normalisation (RMSNorm, or LayerNorm with a bias) over its ``{"weight", "bias"}`` dict."""
    return _block_norm(cfg).apply({"params": p}, x)


def _attention_block(cfg, p, x, mask: AttentionMask, positions, inv_freq, cache_kv, index, keys=None,
                     residual=True):
    """``x + Attn(norm x)`` for one layer's parameter dict; ``residual=False`` gives the branch alone.

    ``inv_freq`` is accepted for the callers that compute it; the module derives the same table from ``cfg``.
    """
    x = constrain_batch(x)
    o, cache_kv = Block(cfg).apply({"params": p}, x, mask, positions, cache_kv, index, keys,
                                   method=Block.attention_branch)
    return (x + o if residual else o), cache_kv


def _mlp_block(cfg, p, x, key=None, residual=True):
    y = Block(cfg).apply({"params": p}, x, key, method=Block.mlp_branch)
    return x + y if residual else y


def embed(cfg: DecoderConfig, params: Params, input_ids: jnp.ndarray, dtype=None) -> jnp.ndarray:
    return _model(cfg, params).apply({"params": params}, input_ids, dtype, method=CausalLM.embed)


def lm_head(cfg: DecoderConfig, params: Params, hidden: jnp.ndarray) -> jnp.ndarray:
    """Project final hidden states to float32 logits (float64 for float64 hidden states)."""
    return _model(cfg, params).apply({"params": params}, hidden, method=CausalLM.logits)


def lm_head_weight(cfg: DecoderConfig, params: Params, dtype) -> jnp.ndarray:
    """The output projection as [hidden, vocab], for losses that chunk the vocabulary."""
    return _model(cfg, params).apply({"params": params}, dtype, method=CausalLM.lm_head_weight)


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
    remat_group: int = 1,
) -> tuple[jnp.ndarray, KVCache | None]:
    """Run the decoder.

    Returns ``(logits [b, t, vocab] float32, cache)`` or, with ``output="hidden"``,
    the final-norm hidden states [b, t, hidden] (what HF calls the last hidden
    state) instead of logits. With ``cache`` the new tokens are written at
    ``cache.index`` and attend to everything cached before them. ``segment_ids``
    (with per-segment ``position_ids``) keeps packed sequences from seeing each other.
    ``dropout_rng`` turns on ``cfg.dropout`` (training); without it the model is deterministic.
    ``remat_group`` > 1 checkpoints the layers in groups of that many as well (two-level remat, see
    ``jaxft.models.modules.DecoderModel``; training without a cache only).
    """
    return _model(cfg, params, remat, remat_group).apply(
        {"params": params}, input_ids, attention_mask, position_ids, inputs_embeds=inputs_embeds, cache=cache,
        output=output, dtype=dtype, segment_ids=segment_ids, dropout_rng=dropout_rng)
