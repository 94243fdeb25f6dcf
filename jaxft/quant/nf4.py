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


def _blocks(flat: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array]:
    blocks = -(-flat.shape[-1] // block_size)
    x = dynamic._pad_last(flat.astype(jnp.float32), blocks * block_size)
    x = x.reshape(flat.shape[:-1] + (blocks, block_size))
    absmax = jnp.max(jnp.abs(x), axis=-1)
    idx = _nearest_nf4(x / jnp.where(absmax == 0, 1.0, absmax)[..., None])
    return (idx[..., 0::2] << 4) | idx[..., 1::2], absmax


# Every value depends on its own block only, so any run of whole blocks quantizes alone: a loader
# quantizes each device's blocks of a kernel there, bit for bit as the whole kernel.
nf4_blocks = jax.jit(_blocks, static_argnames=("block_size",))
nf4_blocks.__doc__ = """Values [..., n] in the PyTorch [out, in] row-major order -> (codes uint8 [..., blocks,
block_size // 2], float32 maxima [..., blocks]); the last block is zero-padded."""


@functools.partial(jax.jit, static_argnames=("block_size",))
def _kernel_blocks(w: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array]:
    d_in, d_out = w.shape[-2:]
    return _blocks(jnp.swapaxes(w, -1, -2).reshape(w.shape[:-2] + (d_in * d_out,)), block_size)


@jax.jit
def double_quantize(absmax: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """float32 maxima [..., blocks] -> (uint8 dynamic codes [..., blocks], nested absmax, offset [...]).

    A program of its own (not fused into the NF4 pass): the mean is the one order-dependent sum, and a
    loader that quantizes shard by shard runs this same program on the gathered maxima.
    """
    # bitsandbytes' float32 mean; torch sums in another order, so the last bit can differ.
    offset = jnp.mean(absmax, axis=-1)
    absmax_codes, nested = dynamic.quantize_blockwise(absmax - offset[..., None])
    return absmax_codes, nested, offset


def quantize_nf4(w: jax.Array, block_size: int, double_quant: bool):
    """[..., in, out] -> (codes uint8 [..., blocks, block_size // 2], absmax, nested absmax, offset).

    Without double quantization ``absmax`` is float32 [..., blocks] and the last two are None;
    with it ``absmax`` is uint8 dynamic codes, the nested absmax float32 [..., ceil(blocks / 256)]
    and the offset float32 [...].
    """
    codes, absmax = _kernel_blocks(w, block_size)
    if not double_quant:
        return codes, absmax, None, None
    return (codes, *double_quantize(absmax))


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
