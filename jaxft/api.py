"""The small public surface most users need: load, run, save."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg: DecoderConfig, params, input_ids, attention_mask, lora):
    if lora is not None:
        from jaxft.lora import apply as apply_lora

        params = apply_lora(params, lora)
    return forward(cfg, params, input_ids, attention_mask)[0]


def logits(cfg: DecoderConfig, params: dict[str, Any], input_ids, attention_mask=None, lora=None) -> jax.Array:
    """Logits [batch, seq, vocab] in float32; ``lora`` adapts the base params on the fly."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, bool)
    return _logits(cfg, params, input_ids, jnp.asarray(attention_mask, bool), lora)
