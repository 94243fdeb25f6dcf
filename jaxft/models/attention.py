"""Scaled dot-product attention behind one function, chosen per backend.

The model describes *which* keys a query may see with an ``AttentionMask``
(slots for causality, positions for the sliding window, validity for padding);
``attention`` turns that into whatever the chosen implementation needs:

* CPU (and the fallback everywhere): plain XLA einsums, softmax in float32; from
  ``blockwise.DEFAULT_MIN_LENGTH`` tokens the blockwise online softmax (jaxft/models/blockwise.py).
* GPU: cuDNN fused attention through ``jax.nn.dot_product_attention`` (bf16/fp16).
* TPU: the Pallas flash-attention kernel (causal, padding and packed rows).

Which masks each kernel takes, and the logged fallback for the others, are in
``attention_kernels``; with a KV cache (decoding) the XLA path always runs, on the cache's layout.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from jaxft.models import attention_kernels as kernels
from jaxft.models import layers
from jaxft.models.blockwise import DEFAULT_MIN_LENGTH, blockwise_attention

_NEG = -1e30  # finite, so fully masked rows (padding queries) stay NaN-free


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AttentionMask:
    q_slots: jnp.ndarray  # [b, t] index of each query in the key sequence
    kv_valid: jnp.ndarray  # [b, s] bool, False for padding / empty cache slots
    q_positions: jnp.ndarray  # [b, t] rope positions of the queries
    kv_positions: jnp.ndarray  # [b, s]
    sliding_window: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    has_cache: bool = dataclasses.field(default=False, metadata=dict(static=True))
    segment_ids: jnp.ndarray | None = None  # [b, t] packed rows: attend within a segment only

    def dense(self) -> jnp.ndarray:
        """Boolean [b, t, s]: may query t attend to key s."""
        s = self.kv_valid.shape[1]
        kv_slots = jnp.arange(s)[None, None, :]
        allowed = (kv_slots <= self.q_slots[:, :, None]) & self.kv_valid[:, None, :]
        if self.sliding_window is not None:
            # Distance in positions, so a left-padded row sees the same window
            # as the same row unpadded.
            dist = self.q_positions[:, :, None] - self.kv_positions[:, None, :]
            allowed &= dist < self.sliding_window
        if self.segment_ids is not None:
            allowed &= self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
        return allowed


def _backend_impl() -> str:
    forced = os.environ.get("JAXFT_ATTENTION")
    if forced:
        return forced
    return {"gpu": "cudnn", "tpu": "flash"}.get(jax.default_backend(), "xla")


def _blockwise_from(blockwise_from: int | None) -> int:
    if blockwise_from is not None:
        return blockwise_from
    return int(os.environ.get("JAXFT_BLOCKWISE_FROM", DEFAULT_MIN_LENGTH))


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: AttentionMask,
              impl: str | None = None, blockwise_from: int | None = None, cache_layout: bool = False
              ) -> jnp.ndarray:
    """q [b, t, h, d]; k, v [b, s, kv_h, d] with h a multiple of kv_h -> [b, t, h, d].

    ``cache_layout``: k [b·kv_h, s, d] and v [b·kv_h, d, s] instead, as the KV cache holds them (see
    ``KVCache``), which the XLA path reads without moving them.
    Without a fused kernel, queries and keys both at least ``blockwise_from`` long (default
    ``blockwise.DEFAULT_MIN_LENGTH`` or $JAXFT_BLOCKWISE_FROM) run the blockwise online softmax,
    which never holds the [t, s] scores.
    """
    impl = impl or _backend_impl()
    long = _blockwise_from(blockwise_from)
    if cache_layout:
        b, s = q.shape[0], k.shape[1]
        if impl != "blockwise" and min(q.shape[1], s) < long:
            return _xla_cache_attention(q, k, v, mask.dense())
        kv_h = k.shape[0] // b  # the other paths take [b, s, kv_h, d]
        k = k.reshape(b, kv_h, s, -1).transpose(0, 2, 1, 3)
        v = v.reshape(b, kv_h, -1, s).transpose(0, 3, 1, 2)
    elif impl in ("flash", "cudnn"):
        chosen = kernels.route(impl, q, k, mask)
        if chosen.impl == "flash":
            return kernels.tpu_flash(q, k, v, mask)
        if chosen.impl == "cudnn":
            return kernels.cudnn_attention(q, k, v, mask)
        kernels.fall_back(impl, chosen.reason, q.shape[1])
    if impl == "blockwise" or min(q.shape[1], k.shape[1]) >= long:
        return blockwise_attention(q, k, v, mask)
    return dense_attention(q, k, v, mask.dense())


def dense_attention(q, k, v, allowed: jnp.ndarray, on_probs=None) -> jnp.ndarray:
    """Plain XLA softmax attention over a boolean ``allowed`` [b, t, s]; ``on_probs`` (e.g. dropout) maps
    the float32 probabilities before they multiply v."""
    b, t, h, d = q.shape
    kv_h = k.shape[2]
    q = q.reshape(b, t, kv_h, h // kv_h, d)
    # Scores as [b, kv_h, t, g, s], the order the batched matmul produces them in: with [.., g, t, s]
    # XLA:CPU transposed every [t, s] tensor of the softmax and its backward (~15% of bf16 attention).
    scores = layers.einsum("btkgd,bskd->bktgs", q, k)
    scores = scores * (d ** -0.5)
    scores = jnp.where(allowed[:, None, :, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    if on_probs is not None:
        probs = on_probs(probs)
    out = layers.einsum("bktgs,bskd->btkgd", probs.astype(v.dtype), v)
    return out.reshape(b, t, h, d).astype(q.dtype)


def _xla_cache_attention(q, k, v, allowed):
    """``dense_attention`` over k [b·kv_h, s, d] and v [b·kv_h, d, s] (the KV cache's layouts)."""
    b, t, h, d = q.shape
    n, s, _ = k.shape
    kv_h, g = n // b, h // (n // b)
    qn = q.reshape(b, t, kv_h, g, d).transpose(0, 2, 3, 1, 4).reshape(n, g * t, d)
    scores = layers.einsum("nqd,nsd->nqs", qn, k).reshape(b, kv_h, g, t, s)
    scores = jnp.where(allowed[:, None, None], scores * (d ** -0.5), _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(n, g * t, s)
    out = layers.einsum("nqs,nds->nqd", probs, v).reshape(b, kv_h, g, t, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype)
