"""Small building blocks shared by the decoder and the recipe modules.

``dense`` is the only place a kernel is multiplied. A kernel is either a plain
array [in, out] or any object with a ``dense(x)`` method -- that is how LoRA
adapters and quantized weights plug in without the model code knowing of them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def accumulation_dtype(dtype) -> jnp.dtype:
    """float32, or float64 for float64 inputs: a float64 run stays float64 end to end."""
    return jnp.promote_types(dtype, jnp.float32)


def matmul(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """x[..., in] @ w[in, out] in x's dtype, accumulating in float32 (float64 for float64 x).

    float32 accumulation keeps bf16 exact enough and is also what makes bf16
    matmuls fast on CPU backends.
    """
    # One flat token axis: a 3-D einsum makes the backward's weight-gradient dots contract two
    # axes, which XLA:CPU lowers with strided transposed copies (~20% of a LoRA step).
    lead = x.shape[:-1]
    y = einsum("ni,io->no", x.reshape(-1, x.shape[-1]), w.astype(x.dtype)).astype(x.dtype)
    return y.reshape(*lead, w.shape[-1])


def einsum(spec: str, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Two-operand ``jnp.einsum`` accumulating in float32 (float64 for float64 a), returned in that dtype.

    Autodiff of ``einsum(..., preferred_element_type=float32)`` multiplies the float32 cotangent by
    the 16-bit operand, a float32 matmul at half the 16-bit rate; for 16-bit operands the backward
    here casts the cotangent to their dtype first (as a 16-bit model's own backward would hold it)
    and accumulates in float32 again.
    """
    if jnp.dtype(a.dtype).itemsize == 2 and jnp.dtype(b.dtype).itemsize == 2:
        sa, sb, out = _einsum_indices(spec)
        if not set(sa) <= set(out) | set(sb) or not set(sb) <= set(out) | set(sa):
            raise ValueError(f"einsum {spec!r}: an index summed within one operand has no 16-bit backward here")
        return _einsum_16bit(spec, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=accumulation_dtype(a.dtype))


def _einsum_indices(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.replace(" ", "").split("->")
    sa, sb = inputs.split(",")
    return sa, sb, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_16bit(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_16bit_fwd(spec, a, b):
    return _einsum_16bit(spec, a, b), (a, b)


def _einsum_16bit_bwd(spec, residuals, g):
    a, b = residuals
    sa, sb, out = _einsum_indices(spec)
    g = g.astype(a.dtype)
    # a first in its gradient's dot: a matmul's weight gradient contracts axis 0 of both operands and
    # comes out [in, out] without a transposed copy.
    da = jnp.einsum(f"{out},{sb}->{sa}", g, b, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{sa},{out}->{sb}", a, g, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


_einsum_16bit.defvjp(_einsum_16bit_fwd, _einsum_16bit_bwd)


def dense(x: jnp.ndarray, kernel, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    y = kernel.dense(x) if hasattr(kernel, "dense") else matmul(x, kernel)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def materialize(kernel, dtype) -> jnp.ndarray:
    """The kernel as a plain array (dequantized / merged), for non-matmul uses."""
    if hasattr(kernel, "materialize"):
        return kernel.materialize(dtype)
    return jnp.asarray(kernel, dtype)


def rms_norm(x: jnp.ndarray, weight: jnp.ndarray, eps: float) -> jnp.ndarray:
    # Like transformers: normalise in float32 (float64 for float64 x), cast back, then scale.
    xf = x.astype(accumulation_dtype(x.dtype))
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    xf = x.astype(accumulation_dtype(x.dtype))
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale + bias).astype(x.dtype)
