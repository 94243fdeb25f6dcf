"""Small building blocks shared by the decoder and the recipe modules.

``dense`` is the only place a kernel is multiplied. A kernel is either a plain
array [in, out] or any object with a ``dense(x)`` method -- that is how LoRA
adapters and quantized weights plug in without the model code knowing of them.
"""

from __future__ import annotations

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
    x2, w = x.reshape(-1, x.shape[-1]), w.astype(x.dtype)
    y = _matmul_16bit(x2, w) if jnp.dtype(x.dtype).itemsize == 2 else \
        jnp.dot(x2, w, preferred_element_type=accumulation_dtype(x.dtype)).astype(x.dtype)
    return y.reshape(*lead, w.shape[-1])


@jax.custom_vjp
def _matmul_16bit(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """[n, in] @ [in, out] for 16-bit floats, with 16-bit operands and float32 accumulation in the backward too.

    Autodiff of ``dot(..., preferred_element_type=float32)`` multiplies the float32 cotangent by the
    16-bit operand, a float32 matmul; the cotangent of a 16-bit output holds 16-bit values, so the
    same products run as a 16-bit matmul with float32 accumulation (about twice as fast on CPUs).
    """
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_16bit_fwd(x, w):
    return _matmul_16bit(x, w), (x, w)


def _matmul_16bit_bwd(residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = jax.lax.dot_general(g, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dw = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul_16bit.defvjp(_matmul_16bit_fwd, _matmul_16bit_bwd)


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
