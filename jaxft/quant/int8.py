"""Per-output-channel int8: each column of a [..., in, out] kernel as ``round(w / s)``, ``s = absmax / 127``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def int8_scales(w: jax.Array) -> jax.Array:
    """[..., in, out] -> float32 scales [..., out]: a column's maximum (exact in any order) over 127."""
    return jnp.max(jnp.abs(w.astype(jnp.float32)), axis=-2) / 127.0


@jax.jit
def int8_codes(w: jax.Array, scales: jax.Array) -> jax.Array:
    """Any rows of [..., in, out] with their columns' scales -> int8 codes (elementwise, so shard by shard)."""
    return jnp.round(w.astype(jnp.float32) / jnp.where(scales == 0, 1.0, scales)[..., None, :]).astype(jnp.int8)


def quantize_int8(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., in, out] -> (int8 codes [..., in, out], float32 scales [..., out])."""
    scales = int8_scales(w)
    return int8_codes(w, scales), scales


def dequantize_int8(codes: jax.Array, scales: jax.Array, dtype) -> jax.Array:
    return (codes.astype(jnp.float32) * scales[..., None, :]).astype(dtype)
