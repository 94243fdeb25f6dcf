"""Rotary position embeddings, including the scaled variants HF checkpoints use."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxft.models.config import DecoderConfig


def inverse_frequencies(cfg: DecoderConfig) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim // 2] in float64, as transformers defines them.

    transformers evaluates the formula in float32; computing it in float64 and rounding once
    (in ``apply_rope``) gives the correctly rounded float32 table, and the exact one for
    float64 runs.
    """
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rope = cfg.rope
    if cfg.rope_type == "linear":
        inv_freq = inv_freq / rope["factor"]
    elif cfg.rope_type == "llama3":
        factor = rope["factor"]
        low, high = rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled)
    return inv_freq


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """Rotate ``x`` [batch, seq, heads, head_dim] by ``positions`` [batch, seq].

    Uses the "rotate half" layout of HF checkpoints (first half pairs with second
    half); angles are computed in float32 for bf16/fp16/fp32 activations, float64 for float64.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    angles = positions.astype(dtype)[..., None] * jnp.asarray(inv_freq, dtype)  # [b, s, d/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
