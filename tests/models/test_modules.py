"""The linen modules declare exactly the HF-named parameter layout, and accept every kernel kind."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft import lora
from jaxft.checkpoint.hf_names import param_specs
from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward
from jaxft.models.init import init_params
from jaxft.models.modules import CausalLM, logical_axes
from jaxft.quant.kernel import quantize

SHAPE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)
CONFIGS = {
    "llama": DecoderConfig.from_hf(dict(model_type="llama", **SHAPE)),
    "qwen2_tied": DecoderConfig.from_hf(dict(model_type="qwen2", tie_word_embeddings=True, **SHAPE)),
    "qwen3": DecoderConfig.from_hf(dict(model_type="qwen3", mlp_bias=True, **SHAPE)),
    "minigpt": DecoderConfig.from_hf(dict(model_type="minigpt", **SHAPE)),
}


def _flat(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {tuple(k.key for k in path): leaf for path, leaf in leaves}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_module_params_are_the_hf_table(name):
    """``CausalLM.init`` gives the paths, shapes and logical axes of ``hf_names.param_specs``."""
    cfg = CONFIGS[name]
    boxed = jax.eval_shape(lambda: CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    shapes = {path: tuple(leaf.shape) for path, leaf in _flat(nn.unbox(boxed)).items()}
    specs = {spec.path: spec for spec in param_specs(cfg)}
    assert shapes == {path: spec.shape for path, spec in specs.items()}
    assert _flat(logical_axes(cfg)) == {path: spec.logical_axes for path, spec in specs.items()}


def test_module_init_runs_and_matches_forward():
    """Parameters from ``init`` are a plain tree that ``forward`` runs like ``init_params``' trees."""
    cfg = CONFIGS["llama"]
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 7)), jnp.int32)
    params = nn.unbox(CausalLM(cfg).init(jax.random.key(1), ids)["params"])
    direct, _ = CausalLM(cfg).apply({"params": params}, ids)
    ours, _ = forward(cfg, params, ids)
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(ours))
    assert float(jnp.std(params["model"]["layers"]["mlp"]["up_proj"]["kernel"])) == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("remat", ["none", "full", "save_dots"])
def test_lora_and_quantized_kernels_pass_through_the_modules(remat):
    """A ``LoraKernel`` over a ``QuantizedKernel`` reaches ``Dense`` unchanged, with each remat policy;
    its zero-initialised B gives the base model's logits, a non-zero B changes them."""
    cfg = CONFIGS["qwen3"]
    params = init_params(cfg, jax.random.key(0))
    q = quantize(params, cfg, "int8")
    adapters = lora.init(jax.random.key(2), cfg, q, rank=4)
    ids = jnp.arange(10, dtype=jnp.int32)[None] % cfg.vocab_size
    base, _ = forward(cfg, q, ids, remat=remat)
    adapted, _ = forward(cfg, lora.apply(q, adapters), ids, remat=remat)
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(base), atol=1e-6)
    bumped = jax.tree.map(lambda x: x + 0.05, adapters)
    changed, _ = forward(cfg, lora.apply(q, bumped), ids, remat=remat)
    assert np.abs(np.asarray(changed) - np.asarray(base)).max() > 1e-3
    full, _ = forward(cfg, params, ids, remat=remat)
    np.testing.assert_allclose(np.asarray(base), np.asarray(full), atol=0.05)  # int8 is close to float32


@pytest.mark.parametrize("name", ["llama", "qwen2_tied", "minigpt"])
def test_decode_layout_gives_the_stacked_logits_and_cache(name):
    """``unstack_layers`` (one tree per layer, run unrolled) equals the scanned stack: logits without a cache,
    and a prefill then one cached token with a per-layer cache, for NF4 + LoRA kernels too (within float32
    rounding: XLA fuses the unrolled layers differently)."""
    from jaxft.models.decoder import init_cache, unstack_layers

    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.05, lora.init(jax.random.key(2), cfg, quantize(params, cfg, "nf4"), rank=4))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 6)), jnp.int32)
    for tree in (params, lora.apply(quantize(params, cfg, "nf4"), adapters)):
        split = unstack_layers(tree)
        assert "layers" not in split["model"] and f"layers_{cfg.num_hidden_layers - 1}" in split["model"]
        np.testing.assert_allclose(np.asarray(forward(cfg, split, ids)[0]), np.asarray(forward(cfg, tree, ids)[0]),
                                   rtol=1e-5, atol=1e-5)
        stacked = init_cache(cfg, 2, 8)
        per_layer = init_cache(cfg, 2, 8, per_layer=True)
        assert per_layer.max_len == stacked.max_len == 8
        for step in (ids[:, :5], ids[:, 5:]):
            want, stacked = forward(cfg, tree, step, cache=stacked)
            got, per_layer = forward(cfg, split, step, cache=per_layer)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.stack(per_layer.k), np.asarray(stacked.k), rtol=1e-5, atol=1e-5)
