"""Per-output-channel int8: each column of a [..., in, out] kernel as ``round(w / s)``, ``s = absmax / 127``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def quantize_int8(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., in, out] -> (int8 codes [..., in, out], float32 scales [..., out])."""
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=-2) / 127.0
    codes = jnp.round(w / jnp.where(scale == 0, 1.0, scale)[..., None, :]).astype(jnp.int8)
    return codes, scale


def dequantize_int8(codes: jax.Array, scales: jax.Array, dtype) -> jax.Array:
    return (codes.astype(jnp.float32) * scales[..., None, :]).astype(dtype)
