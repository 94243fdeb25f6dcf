"""boundary_token_weights on hand-made masks, and the weighted loss against a float64 numpy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.recipes.summarize import boundary_token_weights
from jaxft.train.loss import causal_lm_loss, next_token_targets


def reference_boundary_flags(mask, window):
    """The reference's scan, written out: a target after a non-target opens a window of `window`
    positions; the targets inside it are boundary positions."""
    flags = np.zeros(mask.shape, bool)
    for b in range(mask.shape[0]):
        for i in range(1, mask.shape[1]):
            if not mask[b, i - 1] and mask[b, i]:
                flags[b, i] = True
                for j in range(1, min(window, mask.shape[1] - i)):
                    if mask[b, i + j]:
                        flags[b, i + j] = True
    return flags


def test_hand_masks():
    mask = np.array([
        [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],  # one span, longer than the window
        [0, 1, 1, 0, 0, 1, 1, 1, 1, 1],  # two spans: the second is longer than the window
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],  # window cut short by the row's end
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no targets
        [0, 1, 0, 1, 0, 1, 1, 0, 0, 1],  # single-token spans
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # position 0 never opens a window
    ], np.int32)
    a, b = 1.0 + 0.1 * 2.0, 1.0 + 0.1 * 1.0  # inside / outside a window
    expected = np.array([
        [0, 0, a, a, a, a, b, b, 0, 0],
        [0, a, a, 0, 0, a, a, a, a, b],
        [0, 0, 0, 0, 0, 0, 0, a, a, a],
        [0] * 10,
        [0, a, 0, a, 0, a, a, 0, 0, a],
        [b, b, b, 0, 0, 0, 0, 0, 0, 0],
    ], np.float32)
    got = boundary_token_weights(mask)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == mask.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    got_jax = jax.jit(boundary_token_weights)(jnp.asarray(mask))
    assert isinstance(got_jax, jax.Array) and got_jax.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got_jax), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("window", [1, 2, 4, 7])
def test_random_masks_match_the_reference_scan(window):
    rng = np.random.default_rng(window)
    mask = rng.random((16, 40)) < 0.6
    flags = reference_boundary_flags(mask, window)
    expected = np.where(mask, 1 + 0.3 * np.where(flags, 3.0, 1.0), 0.0)
    got = boundary_token_weights(mask.astype(np.int32), window=window, position_weight=3.0, loss_weight=0.3)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert flags.sum() > 0 and (~flags & mask).sum() > 0  # both kinds of target occur


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        boundary_token_weights(np.ones((1, 3)), window=0)


def transcribed_loss(logits, ids, mask, window, position_weight, loss_weight):
    """float64 transcription of the formula: sum_V CE/|V| + lambda * sum_V w*CE/|V|, with the
    targets shifted once (logits at t-1 predict token t)."""
    logits = logits.astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = np.zeros(mask.shape)
    ce[:, 1:] = lse[:, :-1] - np.take_along_axis(logits[:, :-1], ids[:, 1:, None], -1)[..., 0]
    v = mask.astype(bool)
    w = np.where(reference_boundary_flags(v, window), position_weight, 1.0)
    n = v.sum()
    return (ce * v).sum() / n + loss_weight * (w * ce * v).sum() / n


def test_weighted_loss_equals_the_float64_transcription():
    rng = np.random.default_rng(0)
    b, t, h, vocab = 3, 24, 16, 50
    hidden = rng.normal(size=(b, t, h)).astype(np.float32)
    head = rng.normal(size=(h, vocab)).astype(np.float32) * 0.5
    ids = rng.integers(0, vocab, size=(b, t))
    mask = np.zeros((b, t), np.int32)
    mask[0, 10:20] = 1           # prompt then summary then padding
    mask[1, 5:8] = 1             # two packed examples in one row
    mask[1, 15:24] = 1           # ... the second cut by the row's end
    mask[2, 22:] = 1             # a two-token summary at the very end
    weights = boundary_token_weights(mask, window=4, position_weight=2.0, loss_weight=0.1)
    targets, shifted_mask = next_token_targets(jnp.asarray(ids), jnp.asarray(mask))
    shifted_weights = jnp.concatenate([weights[:, 1:], np.zeros((b, 1), np.float32)], axis=1)
    for chunk in (None, 16):
        out = causal_lm_loss(jnp.asarray(hidden), jnp.asarray(head), targets, shifted_mask, shifted_weights,
                             chunk_size=chunk)
        loss = float(out.loss_sum) / float(out.count)
        want = transcribed_loss(hidden.astype(np.float64) @ head.astype(np.float64), ids, mask, 4, 2.0, 0.1)
        assert loss == pytest.approx(want, rel=1e-5)
        assert float(out.count) == mask.sum()
