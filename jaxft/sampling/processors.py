"""Logits processors and token selection, as pure jittable functions.

Each processor takes float32 logits [batch, vocab] plus the token history
[batch, length] and a boolean ``valid`` mask of the same shape that marks the
real tokens (prompt padding and not-yet-generated slots are False). They follow
the Hugging Face processors of the same purpose, except that invalid slots are
ignored instead of being treated as tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxft.sampling.config import SamplingConfig


def _token_mask(tokens: jnp.ndarray, include: jnp.ndarray, vocab: int) -> jnp.ndarray:
    """Boolean [batch, vocab]: which token ids occur at the included slots."""
    b = tokens.shape[0]
    # Excluded slots (and ids past the logits' vocab) scatter to a spare column.
    ids = jnp.where(include & (tokens < vocab), tokens, vocab)
    hit = jnp.zeros((b, vocab + 1), bool).at[jnp.arange(b)[:, None], ids].set(True)
    return hit[:, :vocab]


def repetition_penalty(logits: jnp.ndarray, tokens: jnp.ndarray, valid: jnp.ndarray,
                       penalty: float) -> jnp.ndarray:
    """Divide positive / multiply negative logits of every token already seen by ``penalty``."""
    seen = _token_mask(tokens, valid, logits.shape[-1])
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def no_repeat_ngram(logits: jnp.ndarray, tokens: jnp.ndarray, valid: jnp.ndarray,
                    length: jnp.ndarray | int, n: int) -> jnp.ndarray:
    """Ban every token that would complete an n-gram already present in the row.

    ``length`` is the number of filled slots of ``tokens`` (the next token goes
    at slot ``length``); the last ``n - 1`` of them are the prefix to match.
    """
    b, total = tokens.shape
    if n < 1 or total < n:
        return logits
    length = jnp.asarray(length, jnp.int32)
    start = jnp.maximum(length - (n - 1), 0)
    prefix = jax.lax.dynamic_slice(tokens, (0, start), (b, n - 1))
    prefix_ok = (length >= n - 1) & jax.lax.dynamic_slice(valid, (0, start), (b, n - 1)).all(-1)
    # windows[:, j, k] = tokens[:, j + k]; a window whose first n-1 tokens equal
    # the prefix bans its last one. Windows must be made of real tokens only.
    count = total - n + 1
    windows = jnp.stack([tokens[:, k:k + count] for k in range(n)], axis=-1)
    window_ok = jnp.stack([valid[:, k:k + count] for k in range(n)], axis=-1).all(-1)
    window_ok &= jnp.arange(count)[None, :] + n <= length  # entirely before the next slot
    matches = (windows[..., :-1] == prefix[:, None, :]).all(-1) & window_ok & prefix_ok[:, None]
    banned = _token_mask(windows[..., -1], matches, logits.shape[-1])
    return jnp.where(banned, -jnp.inf, logits)


def count_penalty(logits: jnp.ndarray, tokens: jnp.ndarray, valid: jnp.ndarray, penalty: float) -> jnp.ndarray:
    """Subtract ``ln(penalty) * count(t)`` from the logit of every token t, counting the valid slots."""
    b, vocab = logits.shape
    ids = jnp.where(valid & (tokens < vocab), tokens, vocab)
    counts = jnp.zeros((b, vocab + 1), jnp.float32).at[jnp.arange(b)[:, None], ids].add(1.0)[:, :vocab]
    return logits - jnp.float32(math.log(penalty)) * counts


def recent_tokens(tokens: jnp.ndarray, valid: jnp.ndarray, length: jnp.ndarray | int, n: int,
                  vocab: int) -> jnp.ndarray:
    """Boolean [batch, vocab]: the ids at the last ``n`` filled slots before ``length``."""
    slots = jnp.arange(tokens.shape[1])[None, :]
    include = valid & (slots < length) & (slots >= jnp.asarray(length) - n)
    return _token_mask(tokens, include, vocab)


def _filter_then_ban(sampling: SamplingConfig, logits: jnp.ndarray, banned: jnp.ndarray) -> jnp.ndarray:
    """Temperature and top-p first, then the bans; only the banned-out corner case falls back to greedy."""
    allowed_best = jnp.where(banned, -jnp.inf, logits)
    if sampling.greedy:
        return allowed_best
    scaled = jax.nn.log_softmax(logits, axis=-1) / sampling.temperature
    if sampling.top_p < 1.0:
        scaled = top_p(scaled, sampling.top_p)
    kept = jnp.where(banned, -jnp.inf, scaled)
    best = jnp.argmax(allowed_best, axis=-1)
    one_hot = jnp.where(jnp.arange(logits.shape[-1])[None, :] == best[:, None], 0.0, -jnp.inf)
    return jnp.where(jnp.isfinite(kept).any(-1, keepdims=True), kept, one_hot)


def suppress(logits: jnp.ndarray, token_ids: tuple[int, ...], active: jnp.ndarray | bool) -> jnp.ndarray:
    """Set the logits of ``token_ids`` to -inf where ``active``."""
    if not token_ids:
        return logits
    ids = jnp.asarray(token_ids, jnp.int32)
    masked = logits.at[:, ids].set(-jnp.inf)
    return jnp.where(active, masked, logits)


def top_k(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """Keep the k largest logits (and any tied with the k-th)."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p(logits: jnp.ndarray, p: float) -> jnp.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches ``p``."""
    ascending = jnp.sort(logits, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    # Tokens whose cumulative mass (from the least likely up) stays within
    # 1 - p are dropped; the most likely token always survives. The dropped
    # tokens form a prefix of the ascending order, so one threshold suffices.
    dropped = (cumulative <= 1 - p).at[..., -1].set(False)
    threshold = jnp.take_along_axis(ascending, dropped.sum(-1, keepdims=True), axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def process_logits(sampling: SamplingConfig, logits: jnp.ndarray, tokens: jnp.ndarray, valid: jnp.ndarray,
                   length: jnp.ndarray, step: jnp.ndarray, eos_ids: tuple[int, ...]) -> jnp.ndarray:
    """Penalties and EOS suppression, in the order Hugging Face applies them."""
    if sampling.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, tokens, valid, sampling.repetition_penalty)
    if sampling.count_penalty != 1.0:
        logits = count_penalty(logits, tokens, valid, sampling.count_penalty)
    if sampling.no_repeat_ngram_size > 0:
        logits = no_repeat_ngram(logits, tokens, valid, length, sampling.no_repeat_ngram_size)
    if sampling.ban_after_top_p:
        vocab = logits.shape[-1]
        banned = jnp.zeros(logits.shape, bool)
        if sampling.ban_recent > 0:
            banned |= recent_tokens(tokens, valid, length, sampling.ban_recent, vocab)
        if sampling.min_new_tokens > 0 and eos_ids:
            eos = jnp.zeros((vocab,), bool).at[jnp.asarray(eos_ids, jnp.int32)].set(True)
            banned |= eos[None, :] & (step < sampling.min_new_tokens)
        return _filter_then_ban(sampling, logits, banned)
    if sampling.ban_recent > 0:
        banned = recent_tokens(tokens, valid, length, sampling.ban_recent, logits.shape[-1])
        logits = jnp.where(banned, -jnp.inf, logits)
    if sampling.min_new_tokens > 0:
        logits = suppress(logits, eos_ids, step < sampling.min_new_tokens)
    return logits


def select_token(sampling: SamplingConfig, logits: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    """Greedy argmax, or a sample after temperature, top-k and top-p (HF order)."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if sampling.ban_after_top_p:  # temperature and top-p were applied by process_logits
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        logits = top_k(logits, sampling.top_k)
    if sampling.top_p < 1.0:
        logits = top_p(logits, sampling.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
