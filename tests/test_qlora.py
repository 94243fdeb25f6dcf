import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxft
from jaxft import lora as jlora
from jaxft.checkpoint.hf_names import param_specs
from jaxft.models import paths
from jaxft.quant import dynamic
from jaxft.quant.nf4 import NF4_LEVELS
from jaxft.models.decoder import forward

HALF_GAPS = np.diff(NF4_LEVELS.astype(np.float64)) / 2


def test_nf4_levels_are_normal_quantiles():
    # QLoRA's construction: 8 positive and 7 negative N(0,1) quantiles between
    # probabilities 0.9677083 and 0.5, an exact zero, all divided by the largest.
    normal, offset = NormalDist(), 0.9677083
    pos = [normal.inv_cdf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-normal.inv_cdf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    levels = np.sort(np.array(pos + neg + [0.0]))
    np.testing.assert_allclose(NF4_LEVELS, levels / levels.max(), atol=1e-6, rtol=0)


def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    """Per layer: the PyTorch-layout [out, in] weight flattened and cut into blocks, zero padded."""
    flat = np.swapaxes(w, -1, -2).reshape(w.shape[0], -1)
    pad = -flat.shape[1] % block
    return np.pad(flat, ((0, 0), (0, pad))).reshape(w.shape[0], -1, block)


def test_nf4_round_trip_is_nearest_level_within_analytic_bound():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 36, 20)).astype(np.float32)  # 720 values: the last block is padded
    q = jlora.quantize_kernel(jnp.asarray(w), "nf4", block_size=64)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (2, 12, 32) and q.shape == (2, 36, 20)
    deq = _blocks(np.asarray(q.materialize(jnp.float32), np.float64), 64)
    x = _blocks(w.astype(np.float64), 64)
    absmax = np.abs(x).max(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(q.scales)[..., None], absmax, rtol=1e-7)
    # Each value becomes the nearest NF4 level times its block's absmax ...
    nearest = NF4_LEVELS[np.abs(x / absmax - NF4_LEVELS[:, None, None, None]).argmin(0)] * absmax
    np.testing.assert_allclose(deq, nearest, atol=1e-6, rtol=0)
    # ... so its error is at most half the widest level gap times the absmax, and
    # the block's largest value is exact.
    err = np.abs(deq - x).max(-1, keepdims=True)
    assert np.all(err <= absmax * HALF_GAPS.max() + 1e-6)
    assert np.all(np.abs(deq - x)[x == absmax] <= 1e-6)


def test_nf4_double_quant_bound_and_bytes():
    rng = np.random.default_rng(1)
    L, d_in, d_out = 1, 256, 160  # 640 blocks -> 3 groups of 256 maxima, the last partial
    w = (rng.standard_normal((L, d_in, d_out)) * rng.uniform(0.5, 2, (L, 1, d_out))).astype(np.float32)
    single = jlora.quantize_kernel(jnp.asarray(w), "nf4")
    double = jlora.quantize_kernel(jnp.asarray(w), "nf4", double_quant=True)
    assert double.scales.dtype == jnp.uint8 and double.scale_scales.shape == (L, 3)
    exact = np.asarray(single.scales, np.float64)
    got = np.asarray(double.block_absmax(), np.float64)
    # The centred maxima land on the nearest dynamic code (up to the 65536-bin lookup):
    # the error is at most half the widest code gap times the group's absmax.
    widest = np.diff(dynamic.DYNAMIC_MAP.astype(np.float64)).max()
    nested = np.repeat(np.asarray(double.scale_scales, np.float64), dynamic.DYNAMIC_BLOCK, -1)[:, :exact.shape[-1]]
    assert np.all(np.abs(got - exact) <= nested * (widest / 2 + 2 / 65535) + 1e-6)
    assert np.abs(got - exact).max() < 0.01 * exact.max()
    # Value error: the NF4 error plus at most one level (<= 1) times the maxima error.
    x = _blocks(w.astype(np.float64), 64)
    deq = _blocks(np.asarray(double.materialize(jnp.float32), np.float64), 64)
    bound = exact[..., None] * HALF_GAPS.max() + np.abs(got - exact)[..., None] + 1e-6
    assert np.all(np.abs(deq - x) <= bound)
    blocks, n = 640, d_in * d_out
    assert jlora.bytes_per_param({"k": single}) == (blocks * 32 + blocks * 4) / n
    assert jlora.bytes_per_param({"k": double}) == (blocks * 32 + blocks * 1 + 3 * 4 + 4) / n


def test_dynamic_map_is_the_formula_rounded_to_float32():
    """10**(e - 6) times the midpoints of 2**e + 1 points over [0.1, 1], e = 0..6, both signs, 0 and 1."""
    pos = []
    for e in range(7):
        points = np.linspace(0.1, 1.0, 2 ** e + 1)
        pos += list(10.0 ** (e - 6) * (points[1:] + points[:-1]) / 2)
    exact = np.sort(np.array(pos + [-p for p in pos] + [0.0, 1.0]))
    assert dynamic.DYNAMIC_MAP.dtype == np.float32 and np.all(np.diff(dynamic.DYNAMIC_MAP) > 0)
    np.testing.assert_allclose(dynamic.DYNAMIC_MAP, exact, rtol=2 ** -22, atol=0)


def _bnb():
    try:
        import bitsandbytes.functional as F
        import torch
    except ImportError as e:
        pytest.skip(f"bitsandbytes is not importable: {e}")
    return F, torch


def test_dynamic_8bit_blockwise_equals_bitsandbytes():
    F, torch = _bnb()
    np.testing.assert_array_equal(dynamic.DYNAMIC_MAP, F.create_dynamic_map().numpy())
    rng = np.random.default_rng(3)
    n = 256 * 40 + 77  # a partial last block
    x = (rng.standard_normal(n) * np.exp(2 * rng.standard_normal(n))).astype(np.float32)
    x[256:512] = 0.0  # an all-zero block
    # Values on the lookup's bin edges and centres, in a block whose absmax is 1.
    k = rng.integers(0, 65535, 512)
    x[1024:1536] = np.where(np.arange(512) % 2, (k - 0.5) / 65535 * 2 - 1, k / 65535 * 2 - 1)
    x[1024] = 1.0
    ref_codes, state = F.quantize_blockwise(torch.tensor(x), blocksize=256)
    codes, absmax = dynamic.quantize_blockwise(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(absmax), state.absmax.numpy())
    np.testing.assert_array_equal(np.asarray(codes), ref_codes.numpy())
    ref_deq = F.dequantize_blockwise(ref_codes, state).numpy()
    np.testing.assert_array_equal(np.asarray(dynamic.dequantize_blockwise(codes, absmax)), ref_deq)


@pytest.mark.parametrize("shape", [(576, 1536), (256, 160), (36, 20)])
def test_nf4_double_quant_equals_bitsandbytes(shape):
    """bitsandbytes' QLoRA storage (``quantize_4bit(nf4, blocksize=64, compress_statistics=True)``).

    The NF4 codes and the maxima's 8-bit codes are equal bit for bit. The offset is the
    float32 mean of the maxima, which torch sums in another order: it may differ in the last
    bit, and the nested absmax and the dequantized weights with it, by about one ulp.
    """
    F, torch = _bnb()
    rng = np.random.default_rng(4)
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 0.1, (1, shape[1]))).astype(np.float32)  # [in, out]
    packed, state = F.quantize_4bit(torch.tensor(w.T.copy()), blocksize=64, quant_type="nf4",
                                    compress_statistics=True)
    q = jlora.quantize_kernel(jnp.asarray(w), "nf4", 64, double_quant=True)
    n = w.size
    np.testing.assert_array_equal(np.asarray(q.codes).reshape(-1)[:n // 2], packed.numpy().reshape(-1))
    np.testing.assert_array_equal(np.asarray(q.scales), state.absmax.numpy())
    np.testing.assert_array_max_ulp(np.asarray(q.scale_offset), np.float32(state.offset.item()), maxulp=1)
    np.testing.assert_array_max_ulp(np.asarray(q.scale_scales), state.state2.absmax.numpy(), maxulp=2)
    ref = F.dequantize_4bit(packed, state).numpy().T
    ours = np.asarray(q.materialize(jnp.float32))
    if np.asarray(q.scale_offset) == np.float32(state.offset.item()):
        np.testing.assert_array_equal(ours, ref)
    else:  # the maxima differ by about one ulp, a value by at most a few ulps of the largest weight
        np.testing.assert_allclose(ours, ref, rtol=0, atol=4 * np.spacing(np.abs(ref).max()))
    assert jlora.bytes_per_param({"k": q}) < 0.52 or n < 1000


def test_int8_round_trip_within_half_step_per_output_channel():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((2, 48, 24)) * rng.uniform(0.1, 3, (2, 1, 24))).astype(np.float32)
    q = jlora.quantize_kernel(jnp.asarray(w), "int8")
    assert q.codes.dtype == jnp.int8 and q.scales.shape == (2, 24)
    step = np.abs(w).max(axis=1, keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(q.scales)[:, None], step, rtol=1e-6)
    err = np.abs(np.asarray(q.materialize(jnp.float32)) - w)
    assert np.all(err <= step / 2 * (1 + 1e-5))
    assert jlora.bytes_per_param({"k": q}) == (48 * 24 + 24 * 4) / (48 * 24)


@pytest.fixture(scope="module")
def qwen3(tiny_dir):
    return jaxft.load_pretrained(tiny_dir("qwen3"))


def _ids(vocab=128, shape=(4, 16), seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=shape)


@jax.jit
def _dequantized(params):
    return jax.tree.map(lambda k: k.materialize(jnp.float32) if isinstance(k, jlora.QuantizedKernel) else k,
                        params, is_leaf=lambda k: isinstance(k, jlora.QuantizedKernel))


def test_quantized_logits_and_bytes_per_param(qwen3):
    cfg, params = qwen3
    ids = _ids()
    ref = np.asarray(jaxft.logits(cfg, params, ids))
    kernels = [s for s in param_specs(cfg) if s.path[-1] == "kernel" and s.path[:2] == ("model", "layers")]
    n = sum(math.prod(s.shape) for s in kernels)
    expected_bytes = {"nf4": 0.5 + 4 / 64, "int8": sum(math.prod(s.shape) + 4 * s.shape[0] * s.shape[2]
                                                       for s in kernels) / n}
    errors = {}
    for fmt in ("nf4", "int8"):
        q = jlora.quantize(params, cfg, fmt)
        ours = np.asarray(jaxft.logits(cfg, q, ids))
        deq = _dequantized(q)
        # The dequantize-in-the-step path computes what the dequantized weights do.
        np.testing.assert_allclose(ours, np.asarray(jaxft.logits(cfg, deq, ids)), atol=1e-5, rtol=0)
        weight_err = _relative_error([paths.get(deq, s.path[:-1])["kernel"] for s in kernels],
                                     [paths.get(params, s.path[:-1])["kernel"] for s in kernels])
        errors[fmt] = _relative_error([ours], [ref])
        kernel_bpp = jlora.bytes_per_param(q, quantized_only=True)
        print(f"{fmt}: kernels {kernel_bpp:.4f} bytes/param, whole model {jlora.bytes_per_param(q):.4f} "
              f"(float32 {jlora.bytes_per_param(params):.1f}); relative error: weights {weight_err:.2e}, "
              f"logits {errors[fmt]:.2e}")
        assert kernel_bpp == pytest.approx(expected_bytes[fmt], rel=1e-12)
        assert isinstance(q["lm_head"]["kernel"], jax.Array)  # lm_head and embeddings stay as they were
        # Two layers of seven quantized matmuls: the logits' error stays of the order of the weights' error.
        assert errors[fmt] <= 3 * weight_err
    assert errors["int8"] < errors["nf4"] / 4  # 8 bits beat 4


def _relative_error(approx, exact) -> float:
    num = sum(np.sum((np.asarray(a, np.float64) - np.asarray(e, np.float64)) ** 2) for a, e in zip(approx, exact))
    return math.sqrt(num / sum(np.sum(np.asarray(e, np.float64) ** 2) for e in exact))


def test_lora_over_nf4_base(qwen3):
    cfg, params = qwen3
    q = jlora.quantize(params, cfg, "nf4", double_quant=True)
    lora = jlora.init(jax.random.key(0), cfg, q, rank=4, alpha=8)
    rng = np.random.default_rng(1)
    new = jax.tree.map(lambda x: x, lora.params)
    for _, ab in jlora.LoRA(new, lora.config).items():
        ab["b"] = jnp.asarray(0.1 * rng.standard_normal(ab["b"].shape), jnp.float32)
    lora = jlora.LoRA(new, lora.config)
    ids = _ids()
    ours = np.asarray(jaxft.logits(cfg, q, ids, lora=lora))
    ref = np.asarray(jaxft.logits(cfg, _dequantized(q), ids, lora=lora))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    merged = jlora.merge(cfg, q, lora)  # dequantized + merged: plain arrays
    assert isinstance(paths.get(merged, ("model", "layers", "mlp", "up_proj"))["kernel"], jax.Array)
    np.testing.assert_allclose(np.asarray(jaxft.logits(cfg, merged, ids)), ours, atol=1e-4, rtol=0)


def test_qlora_training_reduces_loss(qwen3):
    cfg, params = qwen3
    q = jlora.quantize(params, cfg, "nf4")
    lora = jlora.init(jax.random.key(0), cfg, q, rank=8, alpha=16)
    ids = jnp.asarray(_ids())
    opt = optax.adamw(1e-2, weight_decay=0.0)

    def loss_fn(lora_params):
        adapted = jlora.apply(q, jlora.LoRA(lora_params, lora.config))
        logits = forward(cfg, adapted, ids)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    @jax.jit
    def step(lora_params, state):
        loss, grads = jax.value_and_grad(loss_fn)(lora_params)
        updates, state = opt.update(grads, state, lora_params)
        return optax.apply_updates(lora_params, updates), state, loss

    lora_params, state = lora.params, opt.init(lora.params)
    losses = []
    for _ in range(12):
        lora_params, state, loss = step(lora_params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5, losses


def test_quantize_rejects_bad_requests(qwen3):
    cfg, params = qwen3
    with pytest.raises(ValueError, match="nf3"):
        jlora.quantize(params, cfg, "nf3")
    with pytest.raises(ValueError, match="double_quant"):
        jlora.quantize(params, cfg, "int8", double_quant=True)
    with pytest.raises(ValueError, match="already a QuantizedKernel"):
        jlora.quantize(jlora.quantize(params, cfg), cfg)
    with pytest.raises(ValueError, match="qkv"):
        jlora.quantize(params, cfg, targets=("qkv",))
