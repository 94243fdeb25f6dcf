"""bitsandbytes' dynamic 8-bit data type and its blockwise quantization.

QLoRA's double quantization stores the NF4 block maxima (minus their mean) in this
type, in blocks of 256 with one float32 absmax each. Choosing a code follows
bitsandbytes' CPU kernel exactly (so codes match it bit for bit): the value is
scaled by ``1 / absmax``, mapped to one of 65536 evenly spaced bins of [-1, 1], and
the bin gives the code nearest to its centre. That is the nearest code except within
one bin width (3e-5) of a midpoint, where the bin centre decides.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# The positive codes of bitsandbytes' ``create_dynamic_map()`` (signed, 7 exponent bits)
# below 1.0: for exponent e in 0..6, 10**(e - 6) times the midpoints of 2**e + 1 points
# spaced evenly over [0.1, 1], as torch's float32 ``linspace`` rounds them.
_POSITIVE = np.array([
    5.5000004e-07, 3.2500002e-06, 7.75e-06, 2.1249998e-05, 4.375e-05, 6.625e-05, 8.875e-05, 0.00015625001,
    0.00026875004, 0.00038125002, 0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501,
    0.0012812499, 0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497, 0.0052187503,
    0.00578125, 0.00634375, 0.00690625, 0.00746875, 0.00803125, 0.00859375, 0.009156249, 0.00971875,
    0.01140625, 0.01421875, 0.01703125, 0.019843752, 0.02265625, 0.02546875, 0.028281251, 0.03109375,
    0.03390625, 0.036718752, 0.03953125, 0.042343747, 0.04515625, 0.04796875, 0.05078125, 0.05359375,
    0.05640625, 0.059218753, 0.06203125, 0.06484375, 0.067656256, 0.070468746, 0.07328125, 0.07609375,
    0.07890625, 0.08171876, 0.08453125, 0.08734375, 0.09015625, 0.092968754, 0.09578126, 0.09859375,
    0.107031256, 0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376, 0.19140625, 0.20546874,
    0.21953125, 0.23359375, 0.24765624, 0.26171875, 0.27578127, 0.28984374, 0.30390626, 0.31796873,
    0.33203125, 0.34609374, 0.36015624, 0.37421876, 0.38828123, 0.40234375, 0.41640624, 0.43046874,
    0.44453126, 0.45859373, 0.47265625, 0.4867187, 0.50078124, 0.5148437, 0.5289062, 0.54296875, 0.5570313,
    0.5710938, 0.58515626, 0.5992187, 0.61328125, 0.6273438, 0.6414063, 0.65546876, 0.6695312, 0.68359375,
    0.6976563, 0.7117188, 0.72578126, 0.7398437, 0.75390625, 0.7679688, 0.78203124, 0.79609376, 0.8101562,
    0.82421875, 0.8382813, 0.85234374, 0.86640626, 0.8804687, 0.89453125, 0.9085938, 0.92265624, 0.93671876,
    0.9507812, 0.96484375, 0.9789063, 0.99296874,
], np.float32)
# 256 sorted codes: the negatives, zero, the positives and 1.0.
DYNAMIC_MAP = np.concatenate([-_POSITIVE[::-1], [0.0], _POSITIVE, [1.0]]).astype(np.float32)
DYNAMIC_BLOCK = 256

_BINS = 65536


def _bin_to_code() -> np.ndarray:
    """uint8 [65536]: for each bin centre of [-1, 1], the index of the nearest code."""
    mids = np.float32(0.5) * (DYNAMIC_MAP[:-1] + DYNAMIC_MAP[1:])
    centres = np.float32(-1.0) + (np.float32(2.0) * np.arange(_BINS, dtype=np.float32)) / np.float32(_BINS - 1)
    return np.searchsorted(mids, centres, side="left").astype(np.uint8)


BIN_TO_CODE = _bin_to_code()


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    pad = size - x.shape[-1]
    return x if pad == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def _bin_index(scaled: jax.Array) -> jax.Array:
    """The bin of each value: ``trunc((v + 1) * 0.5 * 65535 + 0.5)`` in float32, as the kernel computes it."""
    return ((jnp.clip(scaled, -1.0, 1.0) + 1.0) * 0.5 * float(_BINS - 1) + 0.5).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("block_size",))
def quantize_blockwise(x: jax.Array, block_size: int = DYNAMIC_BLOCK) -> tuple[jax.Array, jax.Array]:
    """float32 [..., n] -> (uint8 codes [..., n], float32 absmax [..., ceil(n / block_size)])."""
    n = x.shape[-1]
    blocks = -(-n // block_size)
    xb = _pad_last(x.astype(jnp.float32), blocks * block_size).reshape(x.shape[:-1] + (blocks, block_size))
    absmax = jnp.max(jnp.abs(xb), axis=-1)
    inv = 1.0 / jnp.where(absmax == 0, 1.0, absmax)
    codes = jnp.asarray(BIN_TO_CODE)[_bin_index(xb * inv[..., None])]
    # An all-zero block stores code 0, as bitsandbytes does (its absmax of 0 dequantizes it to 0).
    codes = jnp.where((absmax == 0)[..., None], jnp.uint8(0), codes)
    return codes.reshape(x.shape[:-1] + (-1,))[..., :n], absmax


def dequantize_blockwise(codes: jax.Array, absmax: jax.Array, block_size: int = DYNAMIC_BLOCK) -> jax.Array:
    """The inverse of ``quantize_blockwise``: float32 [..., n]."""
    n = codes.shape[-1]
    values = _pad_last(jnp.asarray(DYNAMIC_MAP)[codes], absmax.shape[-1] * block_size)
    values = values.reshape(values.shape[:-1] + (absmax.shape[-1], block_size)) * absmax[..., None]
    return values.reshape(values.shape[:-2] + (-1,))[..., :n]
