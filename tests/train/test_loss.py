import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.train.loss import LossOutput, all_finite, causal_lm_loss, next_token_targets


def _problem(b=3, t=37, h=16, vocab=300, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(b, t, h)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(h, vocab)) / np.sqrt(h), jnp.float32)
    targets = rng.integers(0, vocab, size=(b, t))
    mask = (rng.random((b, t)) > 0.3).astype(np.int32)
    targets = np.where(mask == 1, targets, -100)  # ignore ids on masked tokens must be harmless
    weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(b, t)), jnp.float32)
    return hidden, head, jnp.asarray(targets), jnp.asarray(mask), weights


def _reference(hidden, head, targets, mask, weights):
    """Plain numpy float64 cross-entropy on the masked tokens."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = np.asarray(mask).astype(bool)
    tgt = np.asarray(targets)[keep]
    nll = -logp[keep][np.arange(tgt.size), tgt]
    w = np.asarray(weights, np.float64)[keep]
    correct = (logp[keep].argmax(-1) == tgt).sum()
    return (w * nll).sum(), w.sum(), correct, keep.sum()


@pytest.mark.parametrize("chunk_size", [None, 16, 64, 10_000])
def test_loss_matches_numpy_reference(chunk_size):
    hidden, head, targets, mask, weights = _problem()  # t=37: no chunk size below divides it evenly
    out = causal_lm_loss(hidden, head, targets, mask, weights, chunk_size=chunk_size)
    loss_sum, weight_sum, correct, count = _reference(hidden, head, targets, mask, weights)
    assert isinstance(out, LossOutput)
    np.testing.assert_allclose(float(out.loss_sum), loss_sum, rtol=1e-5)
    np.testing.assert_allclose(float(out.weight_sum), weight_sum, rtol=1e-6)
    assert float(out.correct) == correct and float(out.count) == count


def test_unit_weights_give_the_mean_nll_over_masked_tokens():
    hidden, head, targets, mask, _ = _problem(seed=1)
    out = causal_lm_loss(hidden, head, targets, mask, chunk_size=8)
    loss_sum, _, _, count = _reference(hidden, head, targets, mask, np.ones(mask.shape))
    assert float(out.weight_sum) == count
    np.testing.assert_allclose(float(out.loss_sum / out.weight_sum), loss_sum / count, rtol=1e-5)


def test_chunked_gradients_equal_unchunked():
    hidden, head, targets, mask, weights = _problem(b=2, t=45, h=24, vocab=500, seed=2)

    def mean_loss(chunk_size):
        def f(x, w):
            out = causal_lm_loss(x, w, targets, mask, weights, chunk_size=chunk_size)
            return out.loss_sum / out.weight_sum
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    (v_ref, (gx_ref, gw_ref)) = mean_loss(None)(hidden, head)
    (v, (gx, gw)) = mean_loss(16)(hidden, head)  # 8 time steps per chunk: 45 is padded to 48
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-6)
    for g, ref in ((gx, gx_ref), (gw, gw_ref)):
        rel = np.abs(np.asarray(g) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
        assert rel <= 1e-5
    # Masked tokens get no gradient at all.
    assert np.all(np.asarray(gx)[np.asarray(mask) == 0] == 0)


def test_bf16_inputs_accumulate_in_float32():
    hidden, head, targets, mask, weights = _problem(seed=3)
    out = causal_lm_loss(hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16), targets, mask, weights,
                         chunk_size=32)
    ref = _reference(hidden.astype(jnp.bfloat16).astype(jnp.float32), head.astype(jnp.bfloat16).astype(jnp.float32),
                     targets, mask, weights)[0]
    assert out.loss_sum.dtype == jnp.float32
    np.testing.assert_allclose(float(out.loss_sum), ref, rtol=1e-4)


def test_chunking_shrinks_compiled_temp_memory():
    b, t, h, vocab = 2, 512, 64, 151936
    args = (jax.ShapeDtypeStruct((b, t, h), jnp.float32), jax.ShapeDtypeStruct((h, vocab), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32))

    def temp_bytes(chunk_size):
        def f(x, w, tgt, m):
            return causal_lm_loss(x, w, tgt, m, chunk_size=chunk_size).loss_sum
        compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full, chunked = temp_bytes(None), temp_bytes(128)
    logits_bytes = b * t * vocab * 4
    assert full >= logits_bytes  # the naive graph holds at least one [b*t, V] float32 buffer
    assert chunked * 4 <= full
    assert chunked < logits_bytes / 2


def test_next_token_targets_shift_and_mask_last():
    ids = jnp.array([[5, 6, 7, 8], [9, 10, 11, 12]])
    loss_mask = jnp.array([[0, 1, 1, 1], [0, 0, 1, 0]])
    targets, mask = next_token_targets(ids, loss_mask)
    np.testing.assert_array_equal(targets, [[6, 7, 8, 0], [10, 11, 12, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [0, 1, 0, 0]])


def test_all_finite():
    tree = {"a": jnp.ones(3), "b": (jnp.zeros((2, 2), jnp.bfloat16), jnp.arange(3))}
    assert bool(all_finite(tree))
    assert not bool(all_finite({**tree, "c": jnp.array([1.0, jnp.nan])}))
    assert not bool(jax.jit(all_finite)({**tree, "c": jnp.array([jnp.inf])}))
    assert bool(all_finite({}))


def test_shape_errors_are_clear():
    hidden, head, targets, mask, _ = _problem()
    with pytest.raises(ValueError, match="head_weight"):
        causal_lm_loss(hidden, head.T, targets, mask)
    with pytest.raises(ValueError, match="targets"):
        causal_lm_loss(hidden, head, targets[:, :-1], mask)


def _plain_sums(x, w, targets, mask, weights):
    """The straightforward cross-entropy, differentiated by jax: the reference for the chunked custom VJP."""
    logits = jnp.einsum("bth,hv->btv", x, w)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, jnp.maximum(targets, 0)[..., None], -1)[..., 0]
    live = mask > 0
    return jnp.sum(jnp.where(live, weights * nll, 0.0)), jnp.sum(jnp.where(live, nll, 0.0))


@pytest.mark.parametrize("chunk_size", [16, 45, 10])
def test_chunked_custom_vjp_equals_plain_autodiff(chunk_size):
    """Weighted loss, plain CE and weights all get the plain implementation's gradients (float32, 1e-5)."""
    hidden, head, targets, mask, weights = _problem(b=2, t=45, h=24, vocab=500, seed=4)

    def objective(sums):
        return lambda x, w, wt: (lambda ls, ce: 0.7 * ls + 0.3 * ce)(*sums(x, w, wt))

    chunked = objective(lambda x, w, wt: causal_lm_loss(x, w, targets, mask, wt, chunk_size=chunk_size)[::4][:2])
    plain = objective(lambda x, w, wt: _plain_sums(x, w, targets, mask, wt))
    v, grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(hidden, head, weights)
    v_ref, grads_ref = jax.value_and_grad(plain, argnums=(0, 1, 2))(hidden, head, weights)
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
    for g, ref in zip(grads, grads_ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_ce_sum_is_the_unweighted_nll():
    hidden, head, targets, mask, weights = _problem(seed=5)
    ones = jnp.ones_like(weights)
    for chunk_size in (None, 16):
        out = causal_lm_loss(hidden, head, targets, mask, weights, chunk_size=chunk_size)
        np.testing.assert_allclose(float(out.ce_sum), _reference(hidden, head, targets, mask, ones)[0], rtol=1e-5)


@pytest.mark.parametrize("use_ce", [True, False])
def test_frozen_head_gradients_equal_plain_autodiff(use_ce):
    """A head that gets no gradient takes the path that computes each token's gradient in the forward."""
    hidden, head, targets, mask, weights = _problem(b=2, t=45, h=24, vocab=500, seed=6)
    mix = (0.7, 0.3) if use_ce else (1.0, 0.0)

    def objective(sums):
        return lambda x, wt: (lambda ls, ce: mix[0] * ls + mix[1] * ce)(*sums(x, wt))

    chunked = objective(lambda x, wt: causal_lm_loss(x, head, targets, mask, wt, chunk_size=16)[::4][:2])
    plain = objective(lambda x, wt: _plain_sums(x, head, targets, mask, wt))
    v, grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, weights)
    v_ref, grads_ref = jax.value_and_grad(plain, argnums=(0, 1))(hidden, weights)
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
    for g, ref in zip(grads, grads_ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5, rtol=1e-5)


def _vocab_dots(f, *args) -> int:
    """Dots in the lowered gradient of f with a vocabulary-wide (500) operand or result."""
    hlo = jax.jit(f).lower(*args).as_text()
    return sum(1 for line in hlo.splitlines() if "dot_general" in line and re.search(r"[<x]500x", line))


def test_frozen_head_step_multiplies_by_the_vocabulary_twice():
    """Logits and the hidden-state gradient; a trained head adds the recomputed logits and d W."""
    hidden, head, targets, mask, weights = _problem(b=2, t=45, h=24, vocab=500, seed=7)

    def loss(x, w):
        return causal_lm_loss(x, w, targets, mask, chunk_size=16).loss_sum

    assert _vocab_dots(jax.grad(loss), hidden, head) == 2
    assert _vocab_dots(jax.grad(loss, argnums=(0, 1)), hidden, head) == 4
