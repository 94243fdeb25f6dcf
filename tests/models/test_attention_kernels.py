"""The fused attention kernels on CPU: the Pallas TPU flash kernel in interpret mode and the cuDNN call's
arguments through jax.nn.dot_product_attention(implementation="xla"), against the dense XLA path; and which
kernel (or which named fallback) each mask the trainer builds reaches."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft import compat
from jaxft.models import attention as attn
from jaxft.models import attention_kernels as kernels
from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward
from jaxft.models.init import init_params


def _inputs(b, t, h, kv_h, d, dtype=jnp.float32, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t, h, d)), dtype)
    k, v = (jnp.asarray(r.normal(size=(b, t, kv_h, d)), dtype) for _ in range(2))
    return q, k, v


def _mask(valid, segments=None, window=None):
    valid = jnp.asarray(valid)
    b, t = valid.shape
    pos = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), -1) - 1, 0)
    slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    seg = None if segments is None else jnp.asarray(segments, jnp.int32)
    return attn.AttentionMask(slots, valid, pos, pos, window, segment_ids=seg)


def _valid_rows_loss(f, mask, cot):
    """sum(out * cot) over valid query rows only: padding rows are free to differ between paths."""
    keep = mask.kv_valid[:, :, None, None]
    return lambda q, k, v: jnp.sum(jnp.where(keep, f(q, k, v).astype(jnp.float32) * cot, 0.0))


def _errors(f, q, k, v, mask, ref_inputs):
    """Max |f - dense float32| of the values (valid rows) and of each gradient."""
    dense = lambda q, k, v: attn.dense_attention(q, k, v, mask.dense())
    cot = jnp.asarray(np.random.default_rng(7).normal(size=q.shape), jnp.float32)
    keep = np.asarray(mask.kv_valid)[:, :, None, None]
    ref_out = dense(*ref_inputs)
    ref_grads = jax.grad(_valid_rows_loss(dense, mask, cot), argnums=(0, 1, 2))(*ref_inputs)
    out = f(q, k, v).astype(jnp.float32)
    grads = jax.grad(_valid_rows_loss(f, mask, cot), argnums=(0, 1, 2))(q, k, v)
    errs = [float(np.max(np.abs(np.where(keep, out - ref_out, 0.0))))]
    errs += [float(jnp.max(jnp.abs(g.astype(jnp.float32) - r))) for g, r in zip(grads, ref_grads)]
    return np.array(errs)


def _flash_errors(q, k, v, mask, ref_inputs):
    """``_errors`` of the TPU flash kernel, interpreted on the CPU."""
    with compat.tpu_interpret_mode():
        return _errors(jax.jit(lambda q, k, v: kernels.tpu_flash(q, k, v, mask)), q, k, v, mask, ref_inputs)


def _padding_cases(b, t):
    right = np.ones((b, t), bool)
    right[0, t - 37:] = False
    holes = np.ones((b, t), bool)
    holes[0, :9] = False  # left padding
    holes[1, 40:51] = False  # masked slots in the middle (condense's prefix layout)
    return {"right": right, "holes": holes}


# -- the TPU flash kernel, interpreted ----------------------------------------------------------

@pytest.mark.parametrize("length, block", [(4096, 512), (2048, 512), (1000, 512), (640, 128), (256, 256), (24, 128)])
def test_flash_block_sizes_for_real_lengths(length, block):
    padded = length + (-length % kernels.FLASH_TILE)
    sizes = kernels.flash_block_sizes(padded)
    assert (sizes.block_q, sizes.block_k_major, sizes.block_k, sizes.block_q_dkv, sizes.block_k_dq) == (block,) * 5
    assert padded % block == 0


@pytest.mark.parametrize("padding", ["right", "holes"])
def test_flash_float32_values_and_gradients(padding):
    """t=200 pads to two 128-token tiles; GQA (4 query heads over 2 kv heads)."""
    q, k, v = _inputs(2, 200, 4, 2, 64)
    mask = _mask(_padding_cases(2, 200)[padding])
    errs = _flash_errors(q, k, v, mask, (q, k, v))
    assert errs.max() <= 1e-5, errs


@pytest.mark.slow
def test_flash_bfloat16_within_the_dense_bfloat16_error():
    q, k, v = _inputs(2, 200, 4, 2, 64)
    mask = _mask(_padding_cases(2, 200)["holes"])
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    ref = [x.astype(jnp.float32) for x in bf]  # the same rounded inputs, in float32
    dense_err = _errors(lambda q, k, v: attn.dense_attention(q, k, v, mask.dense()), *bf, mask, ref)
    flash_err = _flash_errors(*bf, mask, ref)
    assert np.all(flash_err <= 1.5 * dense_err + 1e-3), (flash_err, dense_err)


def test_flash_packed_segments_with_padding():
    t = 160
    segments = np.zeros((2, t), np.int32)
    segments[0, :70], segments[0, 70:150] = 1, 2  # two packed examples, then padding
    segments[1, :t] = 1
    segments[1, 100:] = 2
    valid = segments > 0
    q, k, v = _inputs(2, t, 2, 2, 32)
    mask = _mask(valid, segments)
    errs = _flash_errors(q, k, v, mask, (q, k, v))
    assert errs.max() <= 1e-5, errs


@pytest.mark.slow
def test_flash_at_the_block_size_of_long_sequences():
    """1024 tokens run the 512-blocks that 2048- and 4096-token training picks, head_dim 128 (Qwen3)."""
    q, k, v = _inputs(1, 1024, 2, 1, 128)
    valid = np.ones((1, 1024), bool)
    valid[0, 1000:] = False
    mask = _mask(valid)
    assert kernels.flash_block_sizes(1024).block_q == 512
    errs = _flash_errors(q, k, v, mask, (q, k, v))
    assert errs.max() <= 1e-5, errs


# -- the cuDNN call's arguments, computed by XLA -------------------------------------------------

@pytest.mark.parametrize("padding", ["right", "holes"])
def test_cudnn_arguments_match_dense(padding):
    """Right padding takes the sequence-length arguments, other padding the padding column; both are
    checked through jax.nn.dot_product_attention's XLA implementation."""
    q, k, v = _inputs(2, 96, 4, 2, 64)
    mask = _mask(_padding_cases(2, 96)[padding])
    f = jax.jit(lambda q, k, v: kernels.cudnn_attention(q, k, v, mask, implementation="xla"))
    errs = _errors(f, q, k, v, mask, (q, k, v))
    assert errs.max() <= 1e-5, errs


# -- every trainer mask: kernel or named fallback ------------------------------------------------

SHAPE = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach each kernel (while still running it), and resets the warned reasons."""
    seen = {"flash": 0, "cudnn": 0}
    flash, cudnn = kernels.tpu_flash, kernels.cudnn_attention

    def flash_spy(*a):
        seen["flash"] += 1
        return flash(*a)

    def cudnn_spy(q, k, v, mask):
        seen["cudnn"] += 1
        return cudnn(q, k, v, mask, implementation="xla")

    monkeypatch.setattr(kernels, "tpu_flash", flash_spy)
    monkeypatch.setattr(kernels, "cudnn_attention", cudnn_spy)
    monkeypatch.setattr(kernels, "_warned", set())
    return seen


def _model(arch="llama", **extra):
    cfg = DecoderConfig.from_hf(dict(model_type=arch, **SHAPE, **extra))
    return cfg, init_params(cfg, jax.random.PRNGKey(0))


def _trainer_inputs(case):
    """(model kwargs, forward kwargs) of each mask the recipes build."""
    b, t = 2, 48
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 64, size=(b, t)), jnp.int32)
    right = np.ones((b, t), bool)
    right[1, 30:] = False
    if case == "lm padding":
        return {}, dict(input_ids=ids, attention_mask=jnp.asarray(right))
    if case == "packed rows":
        seg = np.ones((b, t), np.int32)
        seg[:, 20:] = 2
        seg[1, 40:] = 0
        pos = np.concatenate([np.arange(20), np.arange(t - 20)])[None].repeat(b, 0)
        return {}, dict(input_ids=ids, attention_mask=jnp.asarray(seg > 0), segment_ids=jnp.asarray(seg),
                        position_ids=jnp.asarray(pos, jnp.int32))
    if case == "condense encoder (embeddings, masked slots, spread positions)":
        from jaxft.recipes.condense.model import condense_position_ids

        tokens = np.ones((b, 32), bool)
        tokens[0, 20:] = False  # a short segment: padding, then the 16 condense slots
        mask = jnp.concatenate([jnp.asarray(tokens), jnp.ones((b, 16), bool)], 1)
        pos = condense_position_ids(jnp.asarray(tokens).sum(-1), 32, 16)
        embeds = jax.random.normal(jax.random.PRNGKey(2), (b, t, SHAPE["hidden_size"]))
        return {}, dict(inputs_embeds=embeds, attention_mask=mask, position_ids=pos)
    if case == "embedllm prefix (embeddings, right padding)":
        embeds = jax.random.normal(jax.random.PRNGKey(3), (b, t, SHAPE["hidden_size"]))
        return {}, dict(inputs_embeds=embeds, attention_mask=jnp.asarray(right))
    if case == "sliding window":
        return dict(arch="mistral", sliding_window=16), dict(input_ids=ids, attention_mask=jnp.asarray(right))
    raise KeyError(case)


# (flash route, cudnn route) per mask: the kernel's name, or the words of the logged reason
ROUTES = {
    "lm padding": ("flash", "cudnn"),
    "packed rows": ("flash", "segment ids (packed rows)"),
    "condense encoder (embeddings, masked slots, spread positions)": ("flash", "cudnn"),
    "embedllm prefix (embeddings, right padding)": ("flash", "cudnn"),
    "sliding window": ("sliding window of 16", "sliding window of 16"),
}


@pytest.mark.parametrize("case", list(ROUTES))
@pytest.mark.parametrize("impl", ["flash", "cudnn"])
def test_every_trainer_mask_reaches_a_kernel_or_the_named_fallback(case, impl, calls, monkeypatch, caplog):
    model_kw, kw = _trainer_inputs(case)
    cfg, params = _model(**model_kw)
    dtype = jnp.float32 if impl == "flash" else jnp.bfloat16
    monkeypatch.setenv("JAXFT_ATTENTION", "xla")
    want, _ = forward(cfg, params, output="hidden", dtype=dtype, **kw)
    monkeypatch.setenv("JAXFT_ATTENTION", impl)
    expected = ROUTES[case][impl == "cudnn"]
    with compat.tpu_interpret_mode(), caplog.at_level(logging.WARNING, logger="jaxft"):
        got, _ = forward(cfg, params, output="hidden", dtype=dtype, **kw)
        forward(cfg, params, output="hidden", dtype=dtype, **kw)  # a second trace warns no more
    fallbacks = [r.getMessage() for r in caplog.records if "kernel does not run" in r.getMessage()]
    if expected == impl:
        assert calls[impl] > 0 and not fallbacks
    else:
        assert calls[impl] == 0 and len(fallbacks) == 1 and expected in fallbacks[0], fallbacks
    keep = np.asarray(kw["attention_mask"])[..., None]
    tol = 1e-5 if dtype == jnp.float32 else 0.1
    np.testing.assert_allclose(np.where(keep, got.astype(np.float32), 0), np.where(keep, want.astype(np.float32), 0),
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", ["flash", "cudnn"])
def test_decoding_with_a_cache_runs_xla_without_a_warning(impl, calls, monkeypatch, caplog):
    from jaxft.models.decoder import init_cache

    cfg, params = _model()
    monkeypatch.setenv("JAXFT_ATTENTION", impl)
    ids = jnp.ones((1, 8), jnp.int32)
    with caplog.at_level(logging.WARNING, logger="jaxft"):
        _, cache = forward(cfg, params, ids, cache=init_cache(cfg, 1, 16), dtype=jnp.bfloat16)
        forward(cfg, params, ids[:, :1], cache=cache, dtype=jnp.bfloat16)
    assert calls == {"flash": 0, "cudnn": 0}
    assert not [r for r in caplog.records if "kernel does not run" in r.getMessage()]


def test_cudnn_float32_is_a_named_fallback():
    q, k, v = _inputs(1, 8, 2, 2, 16)
    route = kernels.route("cudnn", q, k, _mask(np.ones((1, 8), bool)))
    assert route.impl == "xla" and "float32" in route.reason
    assert kernels.route("cudnn", q.astype(jnp.bfloat16), k, _mask(np.ones((1, 8), bool))).impl == "cudnn"
    assert "head_dim 192" in kernels.route("flash", *_inputs(1, 8, 2, 2, 192)[:2], _mask(np.ones((1, 8), bool))).reason
