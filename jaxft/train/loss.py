"""Causal LM cross-entropy that never materialises the full [batch, time, vocab] logits.

With vocabularies of 128k-152k entries the float32 logits of a modest batch
(and the softmax the backward pass needs) are the largest buffers of a
fine-tuning step, often larger than the LoRA model itself. ``causal_lm_loss``
with ``chunk_size`` scans over chunks of tokens, computes each chunk's logits,
log-sum-exp and target logit; its custom VJP keeps per token either the
gradient with respect to the hidden state (frozen head) or the log-sum-exp
(trained head, whose backward recomputes one chunk's softmax at a time), so
only one chunk of logits is ever alive.

Conventions shared with the train step:

* ``targets`` are already the next tokens (see ``next_token_targets``).
* The returned sums are *sums*: ``loss = loss_sum / weight_sum``. Summing over
  micro-batches before dividing makes gradient accumulation exact.
* Per-token ``weights`` multiply the token's negative log-likelihood, and the
  mean is taken over the sum of weights (a token of weight 2 counts like two
  copies of it). Tokens with ``loss_mask == 0`` contribute nothing, whatever
  their weight or target id (ignored ids such as -100 are safe).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values


class LossOutput(NamedTuple):
    loss_sum: jax.Array  # sum over tokens of weight * mask * nll, float32
    weight_sum: jax.Array  # sum of weight * mask, the divisor of the mean loss
    correct: jax.Array  # masked tokens whose argmax logit is the target
    count: jax.Array  # masked tokens
    ce_sum: jax.Array  # sum over masked tokens of the unweighted nll (plain cross-entropy next to a weighted loss)


def _token_stats(x: jax.Array, head_weight: jax.Array, targets: jax.Array, weights: jax.Array,
                 live: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of weights * nll, sum of nll, count of live argmax hits) for token rows x[n, h]."""
    logits = jnp.einsum("nh,hv->nv", x, head_weight.astype(x.dtype), preferred_element_type=jnp.float32)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    hits = (jnp.argmax(logits, axis=-1) == targets) & live
    # where, not a product: a masked row's nll must not leak a NaN/inf into the sum.
    return (jnp.sum(jnp.where(live, weights * nll, 0.0)), jnp.sum(jnp.where(live, nll, 0.0)),
            jnp.sum(hits.astype(jnp.float32)))


def _chunk_logits(x, w):
    return jnp.einsum("nh,hv->nv", x, w, preferred_element_type=jnp.float32)


def _chunks_forward(xs, w, targets, weights, live, *, unit_grads: bool = False):
    """Scan over chunks [C, n, ...]: the three sums, each token's nll, and for the backward either each
    token's logsumexp or (``unit_grads``) its d nll / d x, ``(softmax - onehot(target)) @ w.T``."""
    def body(carry, chunk):
        x, tgt, wt, lv = chunk
        logits = _chunk_logits(x, w)
        lse = jax.nn.logsumexp(logits, axis=-1)
        nll = lse - jnp.take_along_axis(logits, tgt[:, None], axis=-1)[:, 0]
        hits = (jnp.argmax(logits, axis=-1) == tgt) & lv
        sums = (jnp.sum(jnp.where(lv, wt * nll, 0.0)), jnp.sum(jnp.where(lv, nll, 0.0)),
                jnp.sum(hits.astype(jnp.float32)))
        saved = _unit_grads(x, w, logits, lse, tgt) if unit_grads else lse
        return tuple(c + v for c, v in zip(carry, sums)), (saved, jnp.where(lv, nll, 0.0))

    zero = jnp.zeros((), jnp.float32)
    sums, (saved, nll) = jax.lax.scan(body, (zero, zero, zero), (xs, targets, weights, live))
    return sums, saved, nll


def _nll_grad_logits(logits, lse, tgt):
    """d nll / d logits of each token row: softmax - onehot(target)."""
    return jnp.exp(logits - lse[:, None]) - jax.nn.one_hot(tgt, logits.shape[1], dtype=logits.dtype)


def _unit_grads(x, w, logits, lse, tgt):
    """d nll / d x of each token row, float32 [n, h]."""
    dlogits = _nll_grad_logits(logits, lse, tgt).astype(x.dtype)
    return jnp.einsum("nv,hv->nh", dlogits, w, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _chunked_sums(xs, w, targets, weights, live):
    return _chunks_forward(xs, w, targets, weights, live)[0]


def _chunked_sums_fwd(xs, w, targets, weights, live):
    """A frozen head (LoRA, prefix tuning): each token's gradient is a per-token coefficient times a
    vector that does not depend on the cotangents, so the forward computes that vector while the
    chunk's logits are at hand and the backward needs no logits at all -- two vocabulary matmuls in
    the step instead of three. A trained head needs d W, which the backward gets from the logits
    recomputed chunk by chunk."""
    head_trains = w.perturbed
    xs, w, targets, weights, live = custom_vjp_primal_tree_values((xs, w, targets, weights, live))
    sums, saved, nll = _chunks_forward(xs, w, targets, weights, live, unit_grads=not head_trains)
    return sums, (xs, w if head_trains else None, targets, weights, live, saved, nll)


def _cotangent(g) -> jax.Array:
    return jnp.zeros((), jnp.float32) if isinstance(g, SymbolicZero) else g


def _chunked_sums_bwd(res, cotangents):
    """d(loss)/d(logits) of a token is c * (softmax - onehot(target)) with c = g_loss * weight + g_ce
    on live tokens and 0 elsewhere; the argmax count has no gradient."""
    xs, w, targets, weights, live, saved, nll = res
    g_loss, g_ce = _cotangent(cotangents[0]), _cotangent(cotangents[1])
    coef = jnp.where(live, g_loss * weights + g_ce, 0.0)
    dweights = (g_loss * nll).astype(weights.dtype)  # nll is already 0 on dead tokens
    if w is None:  # frozen head: saved holds each token's unit gradient
        return (coef[..., None] * saved).astype(xs.dtype), None, None, dweights, None

    def body(dw, chunk):  # per chunk: softmax from the saved logsumexp (one logits matmul), d x and d W
        x, tgt, c, lse_c = chunk
        dlogits = (c[:, None] * _nll_grad_logits(_chunk_logits(x, w), lse_c, tgt)).astype(x.dtype)
        dx = jnp.einsum("nv,hv->nh", dlogits, w, preferred_element_type=jnp.float32).astype(x.dtype)
        dw = dw + jnp.einsum("nh,nv->hv", x, dlogits, preferred_element_type=jnp.float32)
        return dw, dx

    dw, dxs = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), (xs, targets, coef, saved))
    return dxs, dw.astype(w.dtype), None, dweights, None


_chunked_sums.defvjp(_chunked_sums_fwd, _chunked_sums_bwd, symbolic_zeros=True)


def _chunked_stats(hidden, head_weight, targets, weights, live, chunk_size: int):
    """The sums of _token_stats over chunks of whole time slices [b, span]: every chunk covers all batch
    rows, so a batch-sharded ``hidden`` stays sharded the same way inside the scan. Neither pass holds
    more than one chunk of logits (see ``_chunked_sums_fwd``)."""
    b, t, h = hidden.shape
    span = -(-chunk_size // b)  # time steps per chunk, so that a chunk holds ~chunk_size tokens
    pad = -t % span
    if pad:  # padded steps are dead (live=False, weight 0) so they add nothing
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights, live = (jnp.pad(a, ((0, 0), (0, pad))) for a in (targets, weights, live))
    chunks = (t + pad) // span

    def by_chunk(a):  # [b, t, ...] -> [chunks, b * span, ...]
        a = a.reshape((b, chunks, span) + a.shape[2:]).swapaxes(0, 1)
        return a.reshape((chunks, b * span) + a.shape[3:])

    xs, tgt, wts, lv = (by_chunk(a) for a in (hidden, targets, weights, live))
    return _chunked_sums(xs, head_weight.astype(hidden.dtype), tgt, wts, lv)


def causal_lm_loss(hidden: jax.Array, head_weight: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                   weights: jax.Array | None = None, *, chunk_size: int | None = None) -> LossOutput:
    """Token-level cross-entropy of ``hidden @ head_weight`` against ``targets``.

    Args:
      hidden: [b, t, h] final hidden states (any float dtype).
      head_weight: [h, V] output projection; matmuls run in hidden's dtype with
        float32 accumulation and float32 logits.
      targets: [b, t] integer next-token ids.
      loss_mask: [b, t] 1 where the token counts, 0 elsewhere.
      weights: optional [b, t] per-token weights (default 1).
      chunk_size: about this many tokens per chunk (rounded up to whole time
        steps across the batch); None computes all logits at once. Any t works,
        the last chunk is padded internally.

    Peak memory of the logits is ~chunk_size * V * 4 bytes (twice that in the
    backward pass) instead of b * t * V * 4.
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2] or loss_mask.shape != hidden.shape[:2]:
        raise ValueError(f"causal_lm_loss: expected hidden [b, t, h] and targets/loss_mask [b, t]; got hidden "
                         f"{hidden.shape}, targets {targets.shape}, loss_mask {loss_mask.shape}")
    if head_weight.ndim != 2 or head_weight.shape[0] != hidden.shape[-1]:
        raise ValueError(f"causal_lm_loss: head_weight must be [hidden={hidden.shape[-1]}, vocab]; "
                         f"got {head_weight.shape}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"causal_lm_loss: chunk_size must be positive, got {chunk_size}")

    mask = loss_mask.astype(jnp.float32)
    w = mask if weights is None else mask * weights.astype(jnp.float32)
    live = mask > 0
    # Masked positions may carry ignore ids (-100) or pads; point them at a valid row.
    tgt = jnp.where(live, targets, 0).astype(jnp.int32)

    if chunk_size is None or chunk_size >= targets.size:
        n = targets.size
        loss_sum, ce_sum, correct = _token_stats(hidden.reshape(n, hidden.shape[-1]), head_weight,
                                                 tgt.reshape(n), w.reshape(n), live.reshape(n))
    else:
        loss_sum, ce_sum, correct = _chunked_stats(hidden, head_weight, tgt, w, live, chunk_size)
    return LossOutput(loss_sum, jnp.sum(w), correct, jnp.sum(mask), ce_sum)


def next_token_targets(input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shift ids left so position i predicts token i+1.

    ``loss_mask[:, j]`` says whether token j should be *predicted* (e.g. 1 on
    completion tokens, 0 on prompt and padding). The returned mask is that of
    the predicted token; the last position has no next token and is masked.
    """
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    return targets, mask


def all_finite(tree: Any) -> jax.Array:
    """Scalar bool array: every float leaf of ``tree`` is free of NaN and inf."""
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    checks = [jnp.all(jnp.isfinite(x)) for x in floats]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)
