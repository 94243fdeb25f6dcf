"""Blockwise (online-softmax) attention equals the dense XLA path: values and gradients, every mask kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.models import attention as attn
from jaxft.models.blockwise import blockwise_attention


def _inputs(b=2, t=19, s=None, h=4, kv_h=2, d=8, seed=0):
    s = t if s is None else s
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t, h, d)), jnp.float32)
    k = jnp.asarray(r.normal(size=(b, s, kv_h, d)), jnp.float32)
    v = jnp.asarray(r.normal(size=(b, s, kv_h, d)), jnp.float32)
    return q, k, v


def _mask(b, t, valid, *, window=None, segments=None):
    pos = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), -1) - 1, 0)
    slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    return attn.AttentionMask(slots, valid, pos, pos, window, segment_ids=segments)


def _check(q, k, v, mask, q_block=4, kv_block=8):
    dense = lambda q, k, v: attn.dense_attention(q, k, v, mask.dense())
    block = lambda q, k, v: blockwise_attention(q, k, v, mask, q_block=q_block, kv_block=kv_block)
    np.testing.assert_allclose(block(q, k, v), dense(q, k, v), atol=1e-5, rtol=1e-5)
    cot = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32)
    grads = lambda f: jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * cot), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads(jax.jit(block)), grads(dense)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causal_no_padding():
    q, k, v = _inputs()
    _check(q, k, v, _mask(2, 19, jnp.ones((2, 19), bool)))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding(side):
    q, k, v = _inputs()
    valid = np.ones((2, 19), bool)
    if side == "left":
        valid[0, :6] = False  # queries 0..5 of row 0 see no key at all
    else:
        valid[1, 13:] = False
    _check(q, k, v, _mask(2, 19, jnp.asarray(valid)))


def test_sliding_window_with_left_padding():
    q, k, v = _inputs(t=23)
    valid = np.ones((2, 23), bool)
    valid[1, :3] = False
    _check(q, k, v, _mask(2, 23, jnp.asarray(valid), window=5), q_block=8, kv_block=4)


def test_segments():
    q, k, v = _inputs(t=20)
    segments = jnp.asarray([[1] * 7 + [2] * 9 + [0] * 4, [1] * 20], jnp.int32)
    valid = segments > 0
    _check(q, k, v, _mask(2, 20, valid, segments=segments))


def test_cache_queries_after_the_prefix():
    """Queries at slots 10..15 of a 24-slot cache whose later slots are empty."""
    b, t, s = 2, 6, 24
    q, k, v = _inputs(b=b, t=t, s=s)
    kv_valid = np.zeros((b, s), bool)
    kv_valid[:, :16] = True
    kv_valid[0, :2] = False
    kv_pos = jnp.asarray(np.maximum(np.cumsum(kv_valid, -1) - 1, 0), jnp.int32)
    slots = jnp.broadcast_to(10 + jnp.arange(t), (b, t))
    q_pos = jnp.take_along_axis(kv_pos, slots, axis=1)
    mask = attn.AttentionMask(slots, jnp.asarray(kv_valid), q_pos, kv_pos, 7, has_cache=True)
    _check(q, k, v, mask, q_block=4, kv_block=5)


def test_multi_query_and_single_block():
    q, k, v = _inputs(h=4, kv_h=1, t=9)
    _check(q, k, v, _mask(2, 9, jnp.ones((2, 9), bool)), q_block=64, kv_block=64)


def test_attention_switches_to_blockwise_above_the_threshold(monkeypatch):
    q, k, v = _inputs(t=12)
    mask = _mask(2, 12, jnp.ones((2, 12), bool))
    calls = []
    real = attn.blockwise_attention

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(attn, "blockwise_attention", spy)
    out = attn.attention(q, k, v, mask, impl="xla", blockwise_from=8)
    assert calls, "12 >= 8 queries and keys: blockwise expected"
    np.testing.assert_allclose(out, attn.dense_attention(q, k, v, mask.dense()), atol=1e-5)
    calls.clear()
    attn.attention(q, k, v, mask, impl="xla", blockwise_from=16)
    assert not calls


def test_decoder_forward_with_blockwise_attention_equals_dense(monkeypatch):
    """The whole decoder (Mistral sliding window, packed segments): blockwise path == dense path."""
    from jaxft.models import decoder
    from jaxft.models.config import DecoderConfig
    from jaxft.models.init import init_params

    cfg = DecoderConfig.from_hf(dict(model_type="mistral", vocab_size=64, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=128, sliding_window=6, tie_word_embeddings=False))
    params = init_params(cfg, jax.random.key(0), std=0.2)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 21)), jnp.int32)
    segments = jnp.asarray([[1] * 10 + [2] * 11, [1] * 21], jnp.int32)
    positions = jnp.asarray([list(range(10)) + list(range(11)), list(range(21))], jnp.int32)
    run = lambda: decoder.forward(cfg, params, ids, position_ids=positions, segment_ids=segments)[0]
    monkeypatch.setenv("JAXFT_ATTENTION", "xla")
    dense = run()
    monkeypatch.setenv("JAXFT_ATTENTION", "blockwise")
    np.testing.assert_allclose(run(), dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_cache_layout_gives_the_same_attention(impl):
    """k [b·kv_h, s, d] and v [b·kv_h, d, s] (the KV cache's layouts) equal the [b, s, kv_h, d] inputs,
    on the XLA path that reads them in place and on a path that takes them transposed back."""
    b, t, s, kv_h = 2, 3, 24, 2
    q, k, v = _inputs(b=b, t=t, s=s, kv_h=kv_h)
    slots = jnp.broadcast_to(10 + jnp.arange(t), (b, t))
    kv_valid = np.arange(s)[None] < 13
    kv_valid[0, :2] = False  # a left-padded row
    kv_pos = jnp.asarray(np.maximum(np.cumsum(kv_valid, -1) - 1, 0), jnp.int32)
    mask = attn.AttentionMask(slots, jnp.asarray(kv_valid), kv_pos[:, 10:13], kv_pos, 7, has_cache=True)
    k_cache = k.transpose(0, 2, 1, 3).reshape(b * kv_h, s, -1)
    v_cache = v.transpose(0, 2, 3, 1).reshape(b * kv_h, -1, s)
    want = attn.dense_attention(q, k, v, mask.dense())
    got = attn.attention(q, k_cache, v_cache, mask, impl=impl, cache_layout=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
