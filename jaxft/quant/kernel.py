"""Frozen kernels stored as NF4 or int8, for QLoRA.

NF4 follows QLoRA / bitsandbytes: each layer's weight, in the PyTorch [out, in]
layout, is flattened row-major and cut into blocks of ``block_size`` (64)
values; a block stores its absolute maximum and, per value, the index of the
nearest of 16 "normal float" levels (two 4-bit indices per byte, the first in
the high nibble). With ``double_quant`` the float32 block maxima are themselves
stored as int8 in groups of 256 around their mean, as in QLoRA's double
quantisation (linear int8 codes, not bitsandbytes' dynamic 8-bit map).

int8 stores each output channel as ``round(w / s)`` with ``s = absmax / 127``.

Every leaf keeps the stacked layer axis first, so ``lax.scan`` slices a
``QuantizedKernel`` per layer like a plain kernel; ``dense`` dequantizes the
slice to the activation dtype inside the compiled step and multiplies through
``layers.matmul``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.checkpoint.hf_names import spec_by_path
from jaxft.lora import paths
from jaxft.models import layers
from jaxft.models.config import DecoderConfig

# Quantiles of N(0, 1) normalised to [-1, 1]: 8 positive levels, 7 negative, and
# an exact zero (the NF4 data type of the QLoRA paper).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)
SCALE_GROUP = 256  # block maxima per int8 group with double quantisation

Format = Literal["nf4", "int8"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantizedKernel:
    """A [..., in, out] kernel in NF4 or int8 (leading axes: stacked layers)."""

    codes: jax.Array  # nf4: uint8 [..., blocks, block_size // 2]; int8: int8 [..., in, out]
    scales: jax.Array  # nf4: float32 [..., blocks] (int8 [..., blocks] with double quant); int8: float32 [..., out]
    scale_scales: jax.Array | None = None  # double quant: float32 [..., groups]
    scale_offset: jax.Array | None = None  # double quant: float32 [...]
    fmt: str = dataclasses.field(default="nf4", metadata=dict(static=True))
    kernel_shape: tuple[int, int] = dataclasses.field(default=(0, 0), metadata=dict(static=True))
    block_size: int = dataclasses.field(default=64, metadata=dict(static=True))
    dtype_name: str = dataclasses.field(default="float32", metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape[:-2]) + tuple(self.kernel_shape)

    @property
    def dtype(self) -> jnp.dtype:
        """The dtype the kernel had before quantisation (used when merging or exporting)."""
        return jnp.dtype(self.dtype_name)

    def block_absmax(self) -> jax.Array:
        """float32 [..., blocks] block maxima (nf4), undoing double quantisation."""
        if self.scale_scales is None:
            return self.scales.astype(jnp.float32)
        groups = self.scale_scales.shape[-1]
        q = _pad_last(self.scales.astype(jnp.float32), groups * SCALE_GROUP)
        q = q.reshape(q.shape[:-1] + (groups, SCALE_GROUP)) * self.scale_scales[..., None]
        absmax = q.reshape(q.shape[:-2] + (-1,))[..., :self.scales.shape[-1]]
        return absmax + self.scale_offset[..., None]

    def materialize(self, dtype) -> jax.Array:
        if self.fmt == "int8":
            return (self.codes.astype(jnp.float32) * self.scales[..., None, :]).astype(dtype)
        d_in, d_out = self.kernel_shape
        hi, lo = self.codes >> 4, self.codes & 0xF
        idx = jnp.stack([hi, lo], axis=-1).reshape(self.codes.shape[:-1] + (self.block_size,))
        values = jnp.asarray(NF4_LEVELS)[idx] * self.block_absmax()[..., None]
        flat = values.reshape(values.shape[:-2] + (-1,))[..., :d_in * d_out]
        w_t = flat.reshape(flat.shape[:-1] + (d_out, d_in)).astype(dtype)
        return jnp.swapaxes(w_t, -1, -2)

    def dense(self, x: jax.Array) -> jax.Array:
        return layers.matmul(x, self.materialize(x.dtype))


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    pad = size - x.shape[-1]
    return x if pad == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def _nearest_nf4(normalized: jax.Array) -> jax.Array:
    mids = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    # 15 comparisons fuse into one elementwise pass (cheaper to compile than a search).
    return jnp.sum(normalized[..., None] > mids, axis=-1, dtype=jnp.uint8)


@functools.partial(jax.jit, static_argnames=("block_size", "double_quant"))
def _quantize_nf4(w: jax.Array, block_size: int, double_quant: bool):
    d_in, d_out = w.shape[-2:]
    blocks = -(-d_in * d_out // block_size)
    flat = jnp.swapaxes(w.astype(jnp.float32), -1, -2).reshape(w.shape[:-2] + (d_in * d_out,))
    x = _pad_last(flat, blocks * block_size).reshape(w.shape[:-2] + (blocks, block_size))
    absmax = jnp.max(jnp.abs(x), axis=-1)
    idx = _nearest_nf4(x / jnp.where(absmax == 0, 1.0, absmax)[..., None])
    codes = (idx[..., 0::2] << 4) | idx[..., 1::2]
    if not double_quant:
        return codes, absmax, None, None
    offset = jnp.mean(absmax, axis=-1)
    groups = -(-blocks // SCALE_GROUP)
    centred = _pad_last(absmax - offset[..., None], groups * SCALE_GROUP)
    centred = centred.reshape(centred.shape[:-1] + (groups, SCALE_GROUP))
    scale2 = jnp.max(jnp.abs(centred), axis=-1) / 127.0
    q = jnp.round(centred / jnp.where(scale2 == 0, 1.0, scale2)[..., None]).astype(jnp.int8)
    return codes, q.reshape(q.shape[:-2] + (-1,))[..., :blocks], scale2, offset


@jax.jit
def _quantize_int8(w: jax.Array):
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=-2) / 127.0
    codes = jnp.round(w / jnp.where(scale == 0, 1.0, scale)[..., None, :]).astype(jnp.int8)
    return codes, scale


def quantize_kernel(w: jax.Array, fmt: Format = "nf4", block_size: int = 64,
                    double_quant: bool = False) -> QuantizedKernel:
    """Quantize one [..., in, out] kernel."""
    if fmt not in ("nf4", "int8"):
        raise ValueError(f"quantization format '{fmt}' is not one of nf4, int8")
    if fmt == "int8" and double_quant:
        raise ValueError("double_quant applies to nf4 only (int8 keeps one scale per output channel)")
    if block_size <= 0 or block_size % 2:
        raise ValueError(f"block_size must be a positive even number, got {block_size}")
    meta = dict(fmt=fmt, kernel_shape=tuple(w.shape[-2:]), block_size=block_size, dtype_name=jnp.dtype(w.dtype).name)
    if fmt == "int8":
        codes, scales = _quantize_int8(w)
        return QuantizedKernel(codes, scales, **meta)
    codes, scales, scale2, offset = _quantize_nf4(w, block_size, double_quant)
    return QuantizedKernel(codes, scales, scale2, offset, **meta)


def quantize(params: dict[str, Any], cfg: DecoderConfig, fmt: Format = "nf4",
             targets: tuple[str, ...] | None = None, block_size: int = 64,
             double_quant: bool = False) -> dict[str, Any]:
    """Params with the targeted kernels replaced by ``QuantizedKernel``s.

    ``targets=None`` quantizes every Linear kernel of the decoder layers (not the
    embedding or ``lm_head``, as QLoRA does); otherwise module-name patterns as
    for LoRA targets.
    """
    specs = spec_by_path(cfg)
    within = ("model", "layers") if targets is None else ()
    selected = paths.select(params, ("*",) if targets is None else tuple(targets), within)
    out = params
    for path in selected:
        kernel = paths.get(params, path)["kernel"]
        if not isinstance(kernel, jax.Array):
            raise ValueError(f"'{'/'.join(path)}/kernel' is already a {type(kernel).__name__}")
        spec = specs.get(path + ("kernel",))
        if spec is not None and tuple(kernel.shape) != spec.shape:
            raise ValueError(f"'{'/'.join(path)}/kernel' has shape {tuple(kernel.shape)}, "
                             f"the config implies {spec.shape}")
        out = paths.replace(out, path + ("kernel",), quantize_kernel(kernel, fmt, block_size, double_quant))
    return out


def _is_quantized(x) -> bool:
    return isinstance(x, QuantizedKernel)


def bytes_per_param(params: Any, *, quantized_only: bool = False) -> float:
    """Stored bytes per (logical) parameter: 4.0 for float32, ~0.56 for NF4 kernels.

    ``quantized_only`` restricts the count to the quantized kernels.
    """
    total_bytes = total_params = 0
    for leaf in jax.tree.leaves(params, is_leaf=_is_quantized):
        if _is_quantized(leaf):
            total_bytes += sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(leaf))
            total_params += math.prod(leaf.shape)
        elif not quantized_only:
            total_bytes += leaf.size * leaf.dtype.itemsize
            total_params += leaf.size
    if total_params == 0:
        raise ValueError("no parameters to count" + (" (nothing is quantized)" if quantized_only else ""))
    return total_bytes / total_params
