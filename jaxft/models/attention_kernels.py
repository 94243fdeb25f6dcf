"""The fused attention kernels, which masks each one takes, and the named fallback for the rest.

* TPU: the Pallas flash-attention kernel (``jax.experimental.pallas.ops.tpu.flash_attention``) with
  ``causal=True`` and segment ids that carry both padding and packing (segment 0 is padding). Lengths
  are padded to whole 128-token tiles; the block sizes come from ``flash_block_sizes``.
* GPU: ``jax.nn.dot_product_attention(implementation="cudnn")`` with ``is_causal=True``. Right padding
  goes in as ``query_seq_lengths``/``key_value_seq_lengths``; any other padding (left padding, masked
  slots in the middle) as one extra head-dim column that adds a large negative score to masked keys,
  so no [t, s] mask or bias ever exists (cuDNN turns a mask into a dense bias, and trains its gradient).

What a kernel cannot express (a KV cache, a sliding window counted in positions, packed rows on cuDNN,
float32 on cuDNN, unsupported head dims) runs the XLA path, and ``fall_back`` says so once per reason.
Rows of padding queries may differ from the XLA path's (no loss and no valid query reads them).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

log = logging.getLogger("jaxft")

FLASH_TILE = 128  # the kernel's minimum block; lengths are padded to a multiple of it
FLASH_MAX_BLOCK = 512
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 256  # Hopper and later (128 before)
_MASKED_SCORE = -30000.0  # the padding column's score (before scaling): exp() of it is 0, and fp16 holds it
_warned: set[str] = set()


class Route(NamedTuple):
    impl: str  # "flash", "cudnn" or "xla"
    reason: str | None = None  # why the kernel asked for was not used


def route(impl: str, q: jnp.ndarray, k: jnp.ndarray, mask) -> Route:
    """Which implementation runs ``impl``'s attention over q [b, t, h, d], k [b, s, kv_h, d] and ``mask``."""
    if impl == "flash":
        reason = flash_unsupported(q, k, mask)
    elif impl == "cudnn":
        reason = cudnn_unsupported(q, k, mask)
    else:
        return Route(impl)
    return Route(impl) if reason is None else Route("xla", reason)


def fall_back(impl: str, reason: str, length: int) -> None:
    """Log, once per process and reason, that ``impl``'s kernel is not used."""
    key = f"{impl}: {reason}"
    if key in _warned:
        return
    _warned.add(key)
    log.warning("attention: the %s kernel does not run (%s); the XLA path does, first seen at %d tokens",
                impl, reason, length)


def _common_unsupported(q, k, mask) -> str | None:
    if mask.has_cache:
        return "KV cache"
    if q.shape[1] != k.shape[1]:
        return f"{q.shape[1]} queries over {k.shape[1]} keys"
    if mask.sliding_window is not None:
        return f"sliding window of {mask.sliding_window}, counted in positions, which the kernel cannot mask"
    return None


def flash_unsupported(q, k, mask) -> str | None:
    d = q.shape[-1]
    if d > FLASH_TILE and d % FLASH_TILE:
        return f"head_dim {d}: the flash kernel takes at most {FLASH_TILE} or a multiple of it"
    return _common_unsupported(q, k, mask)


def cudnn_unsupported(q, k, mask) -> str | None:
    d = q.shape[-1]
    if q.dtype not in CUDNN_DTYPES:
        return f"{jnp.dtype(q.dtype).name}: cuDNN fused attention takes bfloat16 or float16"
    if d > CUDNN_MAX_HEAD_DIM or d % 8:
        return f"head_dim {d}: cuDNN takes multiples of 8 up to {CUDNN_MAX_HEAD_DIM}"
    if mask.segment_ids is not None:
        return "segment ids (packed rows): jax.nn.dot_product_attention has no segment argument"
    return _common_unsupported(q, k, mask)


# -- TPU ------------------------------------------------------------------------------------------

def flash_block_sizes(length: int):
    """The kernel's block sizes for a (tile-padded) length: the largest of 512, 256, 128 dividing it."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    block = next(b for b in (FLASH_MAX_BLOCK, 256, FLASH_TILE) if length % b == 0)
    return fa.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                         block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block, block_q_dkv=block,
                         block_k_major_dq=block, block_k_dq=block, block_q_dq=block)


def kernel_segments(mask) -> jnp.ndarray:
    """[b, t] int32: 0 on padding, the packed row's segment id + 1 elsewhere (1 without packing)."""
    seg = jnp.ones_like(mask.kv_valid, jnp.int32) if mask.segment_ids is None else mask.segment_ids + 1
    return jnp.where(mask.kv_valid, seg, 0).astype(jnp.int32)


def tpu_flash(q, k, v, mask) -> jnp.ndarray:
    """q [b, t, h, d]; k, v [b, t, kv_h, d] -> [b, t, h, d] through the Pallas kernel (causal, segments)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    t = q.shape[1]
    pad = -t % FLASH_TILE
    seg = jnp.pad(kernel_segments(mask), ((0, 0), (0, pad)))  # padded tokens: segment 0, never valid
    groups = q.shape[2] // k.shape[2]

    def heads_first(x, repeat=1):
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return jnp.repeat(x, repeat, axis=2).transpose(0, 2, 1, 3)

    out = fa.flash_attention(heads_first(q), heads_first(k, groups), heads_first(v, groups),
                             segment_ids=fa.SegmentIds(q=seg, kv=seg), causal=True, sm_scale=q.shape[-1] ** -0.5,
                             block_sizes=flash_block_sizes(t + pad))
    return out.transpose(0, 2, 1, 3)[:, :t]


# -- GPU ------------------------------------------------------------------------------------------

def cudnn_attention(q, k, v, mask, implementation: str | None = "cudnn") -> jnp.ndarray:
    """Causal attention through ``jax.nn.dot_product_attention``: right-padded batches with sequence
    lengths, any other padding with the padding column. ``implementation="xla"`` computes the same
    arguments with XLA (what the CPU tests check)."""
    valid = mask.kv_valid
    lengths = valid.sum(-1).astype(jnp.int32)
    right_padded = jnp.all(valid == (jnp.arange(valid.shape[1])[None] < lengths[:, None]))

    def with_lengths():
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                                            key_value_seq_lengths=lengths, implementation=implementation)

    def with_padding_column():
        return padding_column_attention(q, k, v, valid, implementation)

    return jax.lax.cond(right_padded, with_lengths, with_padding_column)


def padding_column_attention(q, k, v, kv_valid, implementation: str | None = "cudnn") -> jnp.ndarray:
    """Causal attention with masked keys anywhere, as scores: q gains a column of ones, k one of 0
    (valid) or a large negative number (masked), v one of zeros; 8 columns, as cuDNN wants head dims
    in multiples of 8. Valid scores are unchanged exactly; masked ones get exp() = 0."""
    d = q.shape[-1]
    extra = 8
    ones = jnp.zeros(q.shape[:-1] + (extra,), q.dtype).at[..., 0].set(1)
    penalty = jnp.where(kv_valid, 0.0, _MASKED_SCORE).astype(k.dtype)  # [b, s]
    k_col = jnp.zeros(k.shape[:-1] + (extra,), k.dtype).at[..., 0].set(penalty[:, :, None])
    v_col = jnp.zeros(v.shape[:-1] + (extra,), v.dtype)
    out = jax.nn.dot_product_attention(
        jnp.concatenate([q, ones], -1), jnp.concatenate([k, jax.lax.stop_gradient(k_col)], -1),
        jnp.concatenate([v, v_col], -1), scale=d ** -0.5, is_causal=True, implementation=implementation)
    return out[..., :d]
