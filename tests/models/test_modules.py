"""The linen modules declare the HF-named parameter layout transformers has, and accept every kernel kind."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft import lora
from jaxft.checkpoint.hf_names import param_specs
from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward
from jaxft.models.init import abstract_params, init_params
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


def _fresh_transformers_model(name: str, **overrides):
    import torch
    import transformers

    from tests.tiny import CONFIGS as HF_CONFIGS

    cls_name, kwargs = HF_CONFIGS[name.removesuffix("_biased")]
    if name.endswith("_biased"):
        kwargs = dict(kwargs, attention_bias=True, mlp_bias=True)
    torch.manual_seed(0)
    config = getattr(transformers, cls_name)(**kwargs, **overrides)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("name", ["llama", "llama_tied", "llama_biased", "mistral", "qwen2", "qwen3"])
def test_init_params_are_a_fresh_transformers_models_tensors(name):
    """``init_params`` (``CausalLM.init``) read through the HF names gives the tensors a fresh transformers
    model of the family has: the same names and shapes, the same constants for norms and biases, and
    random matrices of the same standard deviation (``initializer_range``)."""
    std = 0.05
    hf = _fresh_transformers_model(name, initializer_range=std)
    cfg = DecoderConfig.from_hf(hf.config.to_dict())
    params = init_params(cfg, jax.random.key(3), std=std)
    theirs = {n: t.numpy() for n, t in hf.state_dict().items()
              if not (cfg.tie_word_embeddings and n == "lm_head.weight")}
    ours = {}
    for spec in param_specs(cfg):
        node = params
        for key in spec.path:
            node = node[key]
        for i, hf_name in enumerate(spec.hf_names(cfg.num_hidden_layers)):
            value = np.asarray(node[i] if spec.stacked else node)
            ours[hf_name] = value.T if spec.transpose else value
    assert sorted(ours) == sorted(theirs)
    for hf_name, want in theirs.items():
        got = ours[hf_name]
        assert got.shape == want.shape, hf_name
        if np.all(want == want.flat[0]):  # norms (ones) and biases (zeros)
            np.testing.assert_array_equal(got, want, err_msg=hf_name)
        else:
            assert got.std() == pytest.approx(want.std(), rel=0.1), hf_name
            assert abs(got.mean()) < 0.1 * std, hf_name
    assert len({float(ours[n].ravel()[0]) for n in ours if n.endswith("q_proj.weight")}) > 1  # layers differ


def test_init_params_dtype_and_the_layout_of_every_config():
    """``init_params`` draws in the asked dtype, deterministically per key; ``abstract_params`` and
    ``param_specs`` describe the same tree; minigpt's LayerNorms get their biases."""
    cfg = CONFIGS["minigpt"]
    a, b = init_params(cfg, jax.random.key(0), jnp.bfloat16), init_params(cfg, jax.random.key(0), jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(a))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32)),
                 a, b)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_params(cfg, jnp.bfloat16))
    assert shapes == jax.tree.map(lambda x: (x.shape, x.dtype), a)
    assert {s.path: s.shape for s in param_specs(cfg)} == {p: x.shape for p, x in _flat(a).items()}
    assert ("model", "layers", "input_layernorm", "bias") in _flat(a)
    np.testing.assert_array_equal(np.asarray(a["model"]["norm"]["bias"], np.float32), 0.0)


def test_hidden_states_match_transformers(tiny_dir):
    """``forward(hidden_states=...)`` gives transformers' ``output_hidden_states`` (the embeddings, each layer's
    output, the final normed output) for the same inputs_embeds, padding and position ids (two slots sharing
    a position), with the scanned and the unrolled layers and under remat; the first output is unchanged."""
    import torch
    import transformers

    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.models.decoder import unstack_layers

    path = tiny_dir("qwen3")
    cfg, params = load_pretrained(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    rs = np.random.RandomState(0)
    x = rs.normal(size=(2, 7, cfg.hidden_size)).astype(np.float32) * 0.5
    mask = np.ones((2, 7), bool)
    mask[1, 3:5] = False
    positions = np.array([[0, 1, 2, 3, 4, 2, 4], [0, 1, 2, 3, 4, 0, 2]], np.int32)
    with torch.no_grad():
        out = hf(inputs_embeds=torch.tensor(x), attention_mask=torch.tensor(mask.astype(np.int64)),
                 position_ids=torch.tensor(positions, dtype=torch.long), output_hidden_states=True)
    theirs = [h.numpy() for h in out.hidden_states]
    assert len(theirs) == cfg.num_hidden_layers + 1
    keep = mask[..., None]
    inputs = dict(inputs_embeds=jnp.asarray(x), attention_mask=jnp.asarray(mask), position_ids=jnp.asarray(positions))
    plain, _ = forward(cfg, params, output="hidden", **inputs)
    for tree, remat, wanted in ((params, "none", (0, 1, 2)), (params, "full", (-2, -1)),
                                (unstack_layers(params), "none", (1, -1, 0))):
        final, cache, states = forward(cfg, tree, output="hidden", remat=remat, hidden_states=wanted, **inputs)
        assert cache is None and len(states) == len(wanted)
        np.testing.assert_allclose(np.asarray(final), np.asarray(plain), rtol=1e-6, atol=1e-6)
        for i, ours in zip(wanted, states):
            np.testing.assert_allclose(np.asarray(ours) * keep, theirs[i] * keep, rtol=2e-4, atol=2e-4,
                                       err_msg=f"hidden state {i}, remat {remat}")
    logits, _, _ = forward(cfg, params, hidden_states=(-1,), **inputs)
    np.testing.assert_allclose(np.asarray(logits) * keep, out.logits.numpy() * keep, rtol=2e-4, atol=2e-4)


def test_hidden_states_refusals():
    cfg = CONFIGS["llama"]
    params = init_params(cfg, jax.random.key(0))
    ids = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="index 4 is out of range: the decoder has 4 hidden states"):
        forward(cfg, params, ids, hidden_states=(4,))
    from jaxft.models.decoder import init_cache
    with pytest.raises(ValueError, match="KV cache"):
        forward(cfg, params, ids, cache=init_cache(cfg, 1, 8), hidden_states=(-1,))
    with pytest.raises(ValueError, match="remat_group"):
        forward(cfg, params, ids, remat="full", remat_group=3, hidden_states=(-1,))


@pytest.mark.parametrize("remat", ["none", "full", "save_dots", "save_proj"])
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


def test_saved_as_bits_is_the_identity_in_value_and_gradient():
    """``saved_as_bits`` returns its input bit for bit, passes the cotangent through unchanged (also under a
    checkpoint with the remat policy that saves it), and leaves non-16-bit dtypes alone."""
    from jaxft.models.modules import remat_policy, saved_as_bits

    x = jax.random.normal(jax.random.key(0), (2, 5, 8)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(saved_as_bits(x)).view(np.uint16), np.asarray(x).view(np.uint16))
    f = lambda v: jnp.sum(jnp.tanh(v.astype(jnp.float32)) * jnp.arange(8.0))
    want = jax.grad(f)(x)
    _, policy = remat_policy("full")
    for g in (jax.grad(lambda v: f(saved_as_bits(v))), jax.grad(jax.checkpoint(lambda v: f(saved_as_bits(v)),
                                                                               policy=policy))):
        got = g(x)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    y = jnp.ones((3,), jnp.float32)
    assert saved_as_bits(y) is y


def _drawn_per_tensor(cfg, key, dtype):
    """Normal(0, 0.02) matrices from one key per tensor (in ``param_specs`` order), ones for norms, zeros for
    biases: fixed values for the bf16 remat comparisons below, whose float32-excess-precision differences
    depend on the draw (this draw keeps "save_proj" within their tolerances), whatever ``init_params`` draws."""
    specs = param_specs(cfg)
    params = {}
    for spec, k in zip(specs, jax.random.split(key, len(specs))):
        if spec.path[-1] == "bias":
            value = jnp.zeros(spec.shape, dtype)
        elif "norm" in spec.path[-2]:
            value = jnp.ones(spec.shape, dtype)
        else:
            value = (0.02 * jax.random.normal(k, spec.shape, jnp.float32)).astype(dtype)
        node = params
        for name in spec.path[:-1]:
            node = node.setdefault(name, {})
        node[spec.path[-1]] = value
    return params


def test_bf16_remat_saves_layer_inputs_as_16_bit_stacks(monkeypatch):
    """With bfloat16 activations, remat "full" and "save_dots" give the loss and gradients of no remat (and
    those of saving the bfloat16 values themselves, up to XLA:CPU keeping a saved bfloat16 value's float32
    excess precision), and what the compiled step keeps per layer is a 16-bit stack [layers, batch, tokens,
    hidden] (uint16 bits): no float32 copy of it, which XLA:CPU makes of a saved bfloat16 stack. The same
    holds for the projections "save_proj" keeps."""
    from jaxft.models import modules
    cfg = CONFIGS["llama"]
    params = _drawn_per_tensor(cfg, jax.random.key(0), jnp.bfloat16)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24)), jnp.int32)
    embeds = jax.random.normal(jax.random.key(1), (2, 24, cfg.hidden_size)).astype(jnp.bfloat16)

    def loss(p, x, remat):
        hidden, _ = forward(cfg, p, inputs_embeds=x, remat=remat, output="hidden", dtype=jnp.bfloat16)
        return jnp.sum(jnp.square(hidden.astype(jnp.float32)) * (1.0 + (ids % 3)[..., None]))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    base_loss, base_grads = step(params, embeds, "none")
    for remat in ("full", "save_dots", "save_proj"):
        value, grads = step(params, embeds, remat)
        np.testing.assert_allclose(float(value), float(base_loss), rtol=1e-6)
        for g, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-3)
        with monkeypatch.context() as m:
            m.setattr(modules, "saved_as_bits", lambda x, name=None: x)
            plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
            plain_value, plain_grads = plain(params, embeds, remat)
            assert "u16[" not in plain.lower(params, embeds, remat).compile().as_text()
        np.testing.assert_allclose(float(value), float(plain_value), rtol=1e-6)
        for g, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-3)
        hlo = step.lower(params, embeds, remat).compile().as_text()
        stack = f"{cfg.num_hidden_layers},2,24,{cfg.hidden_size}]"
        assert f"u16[{stack}" in hlo
        assert f"f32[{stack}" not in hlo and f"bf16[{stack}" not in hlo
        if remat == "save_proj":  # the kept gate/up projections too
            ffn = f"{cfg.num_hidden_layers},2,24,{cfg.intermediate_size}]"
            assert f"u16[{ffn}" in hlo and f"f32[{ffn}" not in hlo and f"bf16[{ffn}" not in hlo


@pytest.mark.slow  # a dozen compiled steps per dtype
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_remat_group_gives_the_loss_and_gradients_of_the_plain_scan(dtype):
    """Two-level remat (``remat_group``): the same loss and gradients as one checkpoint per layer (bit for bit
    for plain parameters, with and without dropout; within float32 rounding for LoRA factors over int8
    kernels), for "full" and "save_dots"; the parameters keep their [L, ...] layout, and the backward keeps
    L / k group inputs and k layer inputs instead of L layer inputs."""
    shape = dict(SHAPE, num_hidden_layers=6)
    cfg = DecoderConfig.from_hf(dict(model_type="llama", dropout=0.1, **shape))
    params = init_params(cfg, jax.random.key(0), dtype)
    base = quantize(params, cfg, "int8")
    adapters = jax.tree.map(lambda x: x + 0.05, lora.init(jax.random.key(2), cfg, base, rank=4))
    x = jax.random.normal(jax.random.key(1), (2, 24, cfg.hidden_size)).astype(dtype)

    def loss(t, x, remat, group, rng):  # t: the parameters, or LoRA factors over the int8 base
        p = t if isinstance(t, dict) else lora.apply(base, t)
        hidden, _ = forward(cfg, p, inputs_embeds=x, remat=remat, output="hidden", dtype=dtype, remat_group=group,
                            dropout_rng=rng)
        return jnp.sum(jnp.square(hidden.astype(jnp.float32)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    for tree, rng in ((params, None), (params, jax.random.key(3)), (adapters, None)):
        for remat, groups in (("full", (2, 3)), ("save_dots", (3,))):
            want, want_grads = step(tree, x, remat, 1, rng)
            for group in groups:
                value, grads = step(tree, x, remat, group, rng)
                assert float(value) == float(want)
                for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
                    if isinstance(tree, dict):
                        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
                    else:  # the LoRA products sum over the layers in another order: float32 rounding
                        w = np.asarray(w, np.float32)
                        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    stacks = lambda group: set(re.findall(rf"\[(\d+),2,24,{cfg.hidden_size}\]",
                                          step.lower(params, x, "full", group, None).compile().as_text()))
    assert "6" in stacks(1) and "6" not in stacks(2) and {"3", "2"} <= stacks(2)
    with pytest.raises(ValueError, match="does not divide"):
        step(params, x, "full", 4, None)
    with pytest.raises(ValueError, match="needs a remat policy"):
        step(params, x, "none", 2, None)


def test_save_proj_keeps_less_than_save_dots_for_lora_with_equal_gradients():
    """Remat ``save_proj`` gives no-remat LoRA gradients and, compiled, needs less temporary memory than
    ``save_dots`` (which keeps each adapted projection's frozen and adapter matmuls apart)."""
    cfg = DecoderConfig.from_hf(dict(model_type="qwen3", vocab_size=96, hidden_size=64, intermediate_size=192,
                                     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    params = init_params(cfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.01, lora.init(jax.random.key(2), cfg, params, rank=4))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 64)), jnp.int32)

    def loss(a, remat):
        logits, _ = forward(cfg, lora.apply(params, lora.LoRA(a, adapters.config)), ids, remat=remat)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0])

    grad = {r: jax.jit(jax.grad(loss), static_argnums=1) for r in ("none", "save_dots", "save_proj")}
    want = grad["none"](adapters.params, "none")
    got = grad["save_proj"](adapters.params, "save_proj")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    temp = {r: grad[r].lower(adapters.params, r).compile().memory_analysis().temp_size_in_bytes
            for r in ("save_dots", "save_proj")}
    assert temp["save_proj"] < 0.8 * temp["save_dots"], temp


def test_save_proj_does_not_run_the_o_projection_again():
    """Remat ``save_proj`` keeps the residual stream between attention and MLP, so its backward runs fewer
    o-projection products than ``full`` (which recomputes the layer's forward, the o projection included)."""
    cfg = DecoderConfig.from_hf(dict(model_type="qwen3", vocab_size=96, hidden_size=64, intermediate_size=192,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    params = init_params(cfg, jax.random.key(0))
    adapters = lora.init(jax.random.key(2), cfg, params, rank=4)
    ids = jnp.zeros((2, 8), jnp.int32)

    def o_proj_forward_dots(remat):
        loss = lambda a: jnp.sum(forward(cfg, lora.apply(params, lora.LoRA(a, adapters.config)), ids, remat=remat)[0])
        hlo = jax.jit(jax.grad(loss)).lower(adapters.params).compile().as_text()
        return sum(1 for line in hlo.splitlines() if re.search(r"= \S+ dot\(", line) and "o_proj/ni,io->no" in line)

    assert o_proj_forward_dots("save_proj") < o_proj_forward_dots("full")


def test_16_bit_matmul_gradients_equal_autodiff_of_the_float32_accumulating_dot():
    """``layers.matmul`` on bfloat16 (a custom VJP whose backward multiplies 16-bit operands) gives the
    values and gradients of plain autodiff through ``dot(preferred_element_type=float32)``."""
    from jaxft.models import layers

    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(3, 5, 16)), jnp.bfloat16)
    w = jnp.asarray(r.normal(size=(16, 8)), jnp.bfloat16)
    cot = jnp.asarray(r.normal(size=(3, 5, 8)), jnp.float32)

    def plain(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)

    grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * cot), argnums=(0, 1))(x, w)
    np.testing.assert_array_equal(np.asarray(layers.matmul(x, w), np.float32), np.asarray(plain(x, w), np.float32))
    for got, want in zip(grads(layers.matmul), grads(plain)):
        assert got.dtype == want.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("spec", ["btkgd,bskd->bkgts", "bkgts,bskd->btkgd"])
def test_16_bit_einsum_gradients_equal_autodiff_in_float32(spec):
    """``layers.einsum`` on bfloat16 (the attention's two products) gives float32 autodiff's values and
    gradients, up to rounding the cotangent and the gradients to bfloat16."""
    from jaxft.models import layers

    r = np.random.default_rng(1)
    dims = dict(b=2, t=5, s=5, k=2, g=3, d=8)
    lhs, rhs = spec.split("->")[0].split(",")
    a = jnp.asarray(r.normal(size=[dims[c] for c in lhs]), jnp.bfloat16)
    b = jnp.asarray(r.normal(size=[dims[c] for c in rhs]), jnp.bfloat16)
    cot = jnp.asarray(r.normal(size=[dims[c] for c in spec.split("->")[1]]), jnp.bfloat16).astype(jnp.float32)

    def grads(f, a, b):
        return jax.value_and_grad(lambda a, b: jnp.sum(f(a, b) * cot), argnums=(0, 1))(a, b)

    value, got = grads(lambda a, b: layers.einsum(spec, a, b), a, b)
    want_value, want = grads(lambda a, b: jnp.einsum(spec, a, b), a.astype(jnp.float32), b.astype(jnp.float32))
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-6)
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), rtol=1e-2, atol=1e-2)


def test_16_bit_einsum_refuses_an_index_summed_within_one_operand():
    from jaxft.models import layers

    x = jnp.ones((2, 3), jnp.bfloat16)
    with pytest.raises(ValueError, match="ab,bc->c"):
        layers.einsum("ab,bc->c", x, x.T)


def test_bf16_attention_backward_multiplies_16_bit_operands():
    """Every dot in the gradient of bfloat16 attention reads bfloat16 operands (float32 operands would
    run at half the rate)."""
    import re

    from jaxft.models.attention import AttentionMask, attention

    r = np.random.default_rng(2)
    q = jnp.asarray(r.normal(size=(2, 16, 4, 8)), jnp.bfloat16)
    k, v = (jnp.asarray(r.normal(size=(2, 16, 2, 8)), jnp.bfloat16) for _ in range(2))
    pos = jnp.broadcast_to(jnp.arange(16), (2, 16))
    mask = AttentionMask(pos, jnp.ones((2, 16), bool), pos, pos)
    loss = lambda q, k, v: jnp.sum(attention(q, k, v, mask, impl="xla").astype(jnp.float32) ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 6
    for line in dots:
        operands = re.search(r":\s*\((.*?)\)\s*->", line).group(1)
        assert "f32" not in operands, line
