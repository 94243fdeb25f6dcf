"""NF4 blockwise quantization, equal to bitsandbytes' ``quantize_4bit(quant_type="nf4")``.

Each layer's weight, in the PyTorch [out, in] layout, is flattened row-major and cut
into blocks of ``block_size`` (64) values; a block stores its absolute maximum and, per
value, the index of the nearest of 16 "normal float" levels (two 4-bit indices per byte,
the first in the high nibble). Double quantization (``compress_statistics``) stores the
block maxima minus their mean in bitsandbytes' dynamic 8-bit type, in blocks of 256
(``jaxft.quant.dynamic``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.quant import dynamic

# Quantiles of N(0, 1) normalised to [-1, 1]: 8 positive levels, 7 negative, and
# an exact zero (the NF4 data type of the QLoRA paper).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)


def _nearest_nf4(normalized: jax.Array) -> jax.Array:
    mids = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    # 15 comparisons fuse into one elementwise pass (cheaper to compile than a search).
    return jnp.sum(normalized[..., None] > mids, axis=-1, dtype=jnp.uint8)


@functools.partial(jax.jit, static_argnames=("block_size", "double_quant"))
def quantize_nf4(w: jax.Array, block_size: int, double_quant: bool):
    """[..., in, out] -> (codes uint8 [..., blocks, block_size // 2], absmax, nested absmax, offset).

    Without double quantization ``absmax`` is float32 [..., blocks] and the last two are None;
    with it ``absmax`` is uint8 dynamic codes, the nested absmax float32 [..., ceil(blocks / 256)]
    and the offset float32 [...].
    """
    d_in, d_out = w.shape[-2:]
    blocks = -(-d_in * d_out // block_size)
    flat = jnp.swapaxes(w.astype(jnp.float32), -1, -2).reshape(w.shape[:-2] + (d_in * d_out,))
    x = dynamic._pad_last(flat, blocks * block_size).reshape(w.shape[:-2] + (blocks, block_size))
    absmax = jnp.max(jnp.abs(x), axis=-1)
    idx = _nearest_nf4(x / jnp.where(absmax == 0, 1.0, absmax)[..., None])
    codes = (idx[..., 0::2] << 4) | idx[..., 1::2]
    if not double_quant:
        return codes, absmax, None, None
    # bitsandbytes' float32 mean; torch sums in another order, so the last bit can differ.
    offset = jnp.mean(absmax, axis=-1)
    absmax_codes, nested = dynamic.quantize_blockwise(absmax - offset[..., None])
    return codes, absmax_codes, nested, offset


def block_absmax(absmax: jax.Array, nested: jax.Array | None, offset: jax.Array | None) -> jax.Array:
    """float32 [..., blocks] block maxima, undoing double quantization when ``nested`` is given."""
    if nested is None:
        return absmax.astype(jnp.float32)
    return dynamic.dequantize_blockwise(absmax, nested) + offset[..., None]


def dequantize_nf4(codes: jax.Array, absmax: jax.Array, kernel_shape: tuple[int, int], block_size: int,
                   dtype) -> jax.Array:
    """Codes [..., blocks, block_size // 2] and float32 maxima [..., blocks] -> [..., in, out] in ``dtype``."""
    d_in, d_out = kernel_shape
    hi, lo = codes >> 4, codes & 0xF
    idx = jnp.stack([hi, lo], axis=-1).reshape(codes.shape[:-1] + (block_size,))
    values = jnp.asarray(NF4_LEVELS)[idx] * absmax[..., None]
    flat = values.reshape(values.shape[:-2] + (-1,))[..., :d_in * d_out]
    w_t = flat.reshape(flat.shape[:-1] + (d_out, d_in)).astype(dtype)
    return jnp.swapaxes(w_t, -1, -2)
