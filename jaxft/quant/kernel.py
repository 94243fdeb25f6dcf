"""``QuantizedKernel``: a frozen [..., in, out] kernel stored as NF4 or int8.

Every leaf keeps the stacked layer axis first, so ``lax.scan`` slices a
``QuantizedKernel`` per layer like a plain kernel; ``dense`` dequantizes the
slice to the activation dtype inside the compiled step and multiplies through
``layers.matmul``. The formats are in ``jaxft.quant.nf4`` and ``jaxft.quant.int8``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxft.checkpoint.hf_names import spec_by_path
from jaxft.models import layers, paths
from jaxft.models.config import DecoderConfig
from jaxft.quant import int8, nf4

Format = Literal["nf4", "int8"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantizedKernel:
    """A [..., in, out] kernel in NF4 or int8 (leading axes: stacked layers)."""

    codes: jax.Array  # nf4: uint8 [..., blocks, block_size // 2]; int8: int8 [..., in, out]
    # nf4: float32 block maxima [..., blocks] (uint8 dynamic 8-bit codes with double quant); int8: float32 [..., out]
    scales: jax.Array
    scale_scales: jax.Array | None = None  # double quant: float32 [..., ceil(blocks / 256)], the nested absmax
    scale_offset: jax.Array | None = None  # double quant: float32 [...], the mean the maxima were centred on
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
        return nf4.block_absmax(self.scales, self.scale_scales, self.scale_offset)

    def materialize(self, dtype) -> jax.Array:
        if self.fmt == "int8":
            return int8.dequantize_int8(self.codes, self.scales, dtype)
        return nf4.dequantize_nf4(self.codes, self.block_absmax(), self.kernel_shape, self.block_size, dtype)

    def dense(self, x: jax.Array) -> jax.Array:
        return layers.matmul(x, self.materialize(x.dtype))


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
        codes, scales = int8.quantize_int8(w)
        return QuantizedKernel(codes, scales, **meta)
    codes, scales, scale2, offset = nf4.quantize_nf4(w, block_size, double_quant)
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
