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
from jaxft.models.modules import CausalLM, KVCache, RematPolicy, positions_from_mask, sinusoidal_positions
from jaxft.models.rope import inverse_frequencies

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
    hidden_states: tuple[int, ...] | None = None,
) -> tuple[jnp.ndarray, KVCache | None] | tuple[jnp.ndarray, None, tuple[jnp.ndarray, ...]]:
    """Run the decoder.

    Returns ``(logits [b, t, vocab] float32, cache)`` or, with ``output="hidden"``,
    the final-norm hidden states [b, t, hidden] (what HF calls the last hidden
    state) instead of logits. With ``cache`` the new tokens are written at
    ``cache.index`` and attend to everything cached before them. ``segment_ids``
    (with per-segment ``position_ids``) keeps packed sequences from seeing each other.
    ``dropout_rng`` turns on ``cfg.dropout`` (training); without it the model is deterministic.
    ``remat_group`` > 1 checkpoints the layers in groups of that many as well (two-level remat, see
    ``jaxft.models.modules.DecoderModel``; training without a cache only).

    ``hidden_states`` (indices into the L + 1 hidden states, as transformers' ``output_hidden_states``
    numbers them: 0 the embeddings, i the output of layer i - 1, -1 the final normed output) returns
    ``(logits or hidden, None, those states)`` instead; without a cache only. Only the requested states
    are kept: ``hidden_states=(-2, -1)`` is the input to the last layer and the final output.
    """
    return _model(cfg, params, remat, remat_group).apply(
        {"params": params}, input_ids, attention_mask, position_ids, inputs_embeds=inputs_embeds, cache=cache,
        output=output, dtype=dtype, segment_ids=segment_ids, dropout_rng=dropout_rng, hidden_states=hidden_states)
