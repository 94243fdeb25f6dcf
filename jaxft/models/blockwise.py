"""Blockwise (online-softmax) attention in plain JAX, for backends without a fused kernel.

The dense XLA path materialises float32 scores [b, heads, t, s]; at a few
thousand tokens those are the largest buffers of a step. Here queries are cut
into blocks (``lax.map``) and each query block scans over key blocks keeping
the running maximum, normaliser and weighted sum of values (the online softmax
of flash attention), so at most one [b, heads, q_block, kv_block] score tile is
alive. Each query block is rematerialised in the backward pass
(``jax.checkpoint``), so the backward keeps no quadratic residuals either.

Key blocks no query of the block may see (the causal future, outside the
sliding window, other segments) are skipped with ``lax.cond``. The result
equals ``attention.dense_attention`` including its treatment of rows that see
no key at all (left padding): the dense softmax over an all ``-1e30`` row is
uniform, so such rows get the mean of all values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxft.models import layers

# Query and key lengths from which ``attention`` switches to this path on backends
# without a fused kernel; override with the environment variable JAXFT_BLOCKWISE_FROM.
DEFAULT_MIN_LENGTH = 1024
DEFAULT_BLOCK = 512


def _pad_to(a: jnp.ndarray, axis: int, multiple: int, value=0) -> jnp.ndarray:
    pad = -a.shape[axis] % multiple
    if not pad:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, pad)
    return jnp.pad(a, widths, constant_values=value)


def _blocks(a: jnp.ndarray, size: int) -> jnp.ndarray:
    """[b, n * size, ...] -> [n, b, size, ...]."""
    b, n = a.shape[0], a.shape[1] // size
    return a.reshape((b, n, size) + a.shape[2:]).swapaxes(0, 1)


def _allowed_tile(qf, kf, window):
    """Which keys of a key block each query of a query block may see: [b, q_block, kv_block]."""
    slots, pos, seg = qf
    k_slots, k_valid, k_pos, k_seg = kf
    ok = (k_slots[:, None, :] <= slots[:, :, None]) & k_valid[:, None, :]
    if window is not None:
        ok &= (pos[:, :, None] - k_pos[:, None, :]) < window
    if seg is not None:
        ok &= seg[:, :, None] == k_seg[:, None, :]
    return ok


def blockwise_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask, *,
                        q_block: int = DEFAULT_BLOCK, kv_block: int = DEFAULT_BLOCK) -> jnp.ndarray:
    """q [b, t, h, d]; k, v [b, s, kv_h, d]; ``mask`` an ``attention.AttentionMask`` -> [b, t, h, d]."""
    b, t, h, d = q.shape
    s, kv_h = k.shape[1], k.shape[2]
    groups = h // kv_h
    acc = jnp.promote_types(q.dtype, jnp.float32)
    q_block, kv_block = min(q_block, t), min(kv_block, s)
    segments = mask.segment_ids
    if segments is not None and segments.shape[1] != s:
        raise ValueError(f"blockwise attention: segment_ids cover {segments.shape[1]} keys, the keys are {s}")

    # Per-query and per-key facts, padded to whole blocks; padded keys are never valid.
    qs = _blocks(_pad_to(q.reshape(b, t, kv_h, groups, d), 1, q_block), q_block)
    q_slots = _blocks(_pad_to(mask.q_slots, 1, q_block), q_block)
    q_pos = _blocks(_pad_to(mask.q_positions, 1, q_block), q_block)
    ks = _blocks(_pad_to(k, 1, kv_block), kv_block)
    vs = _blocks(_pad_to(v, 1, kv_block), kv_block)
    kv_valid = _blocks(_pad_to(mask.kv_valid, 1, kv_block, False), kv_block)
    kv_pos = _blocks(_pad_to(mask.kv_positions, 1, kv_block), kv_block)
    kv_slots = _blocks(jnp.broadcast_to(_pad_to(jnp.arange(s)[None], 1, kv_block), (b, ks.shape[0] * kv_block)),
                       kv_block)
    if segments is not None:
        q_seg = _blocks(_pad_to(segments, 1, q_block, -1), q_block)
        kv_seg = _blocks(_pad_to(segments, 1, kv_block, -2), kv_block)
    else:
        q_seg = kv_seg = None
    window = mask.sliding_window
    scale = d ** -0.5

    def one_query_block(qb, qf):
        def step(carry, kv):
            m, l, o = carry
            kb, vb, kf = kv
            ok = _allowed_tile(qf, kf, window)

            def update(carry):
                m, l, o = carry
                scores = layers.einsum("bqkgd,bskd->bkgqs", qb, kb) * scale
                okb = ok[:, None, None]
                # The output does not depend on the running maximum (it cancels), so no gradient flows
                # through it.
                m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(jnp.where(okb, scores, -jnp.inf), axis=-1)))
                # Rows with nothing allowed so far keep m=-inf; shift them by 0 instead.
                shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                # exp of -inf (not a where after exp): a masked score above the maximum must not
                # overflow to inf and turn the gradient into NaN.
                p = jnp.exp(jnp.where(okb, scores - shift[..., None], -jnp.inf))
                corr = jnp.exp(jnp.where(jnp.isfinite(m), m - shift, -jnp.inf))
                l = l * corr + p.sum(-1)
                pv = layers.einsum("bkgqs,bskd->bkgqd", p.astype(vb.dtype), vb)
                return m_new, l, o * corr[..., None] + pv

            return jax.lax.cond(ok.any(), update, lambda c: c, carry), None

        shape = (b, kv_h, groups, q_block)
        init = (jnp.full(shape, -jnp.inf, acc), jnp.zeros(shape, acc), jnp.zeros(shape + (d,), acc))
        kf = (kv_slots, kv_valid, kv_pos, kv_seg)
        (m, l, o), _ = jax.lax.scan(jax.checkpoint(step), init, (ks, vs, kf))
        return o, l

    def query_block(args):
        qb, slots, pos, seg = args
        o, l = jax.checkpoint(one_query_block)(qb, (slots, pos, seg))
        return o, l

    o, l = jax.lax.map(query_block, (qs, q_slots, q_pos, q_seg))  # [nq, b, kv_h, g, q_block(, d)]
    # Rows that see no key: the dense softmax is uniform over all s keys.
    mean_v = jnp.mean(v.astype(acc), axis=1)  # [b, kv_h, d]
    seen = l > 0
    out = jnp.where(seen[..., None], o / jnp.where(seen, l, 1.0)[..., None], mean_v[None, :, :, None, None])
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, -1, h, d)[:, :t]
    return out.astype(q.dtype)
