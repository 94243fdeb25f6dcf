import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxft
from jaxft import lora as jlora
from jaxft.models import paths
from jaxft.models.decoder import forward


def _ids(vocab=128, shape=(4, 16), seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=shape)


def _with_random_b(lora, seed=0, std=0.1):
    """Non-zero B so an adapter actually changes the model."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: x, lora.params)
    for _, ab in jlora.LoRA(params, lora.config).items():
        ab["b"] = jnp.asarray(std * rng.standard_normal(ab["b"].shape), ab["b"].dtype)
    return jlora.LoRA(params, lora.config)


@pytest.fixture(scope="module")
def qwen3(tiny_dir):
    return jaxft.load_pretrained(tiny_dir("qwen3"))


def test_init_starts_exactly_at_base(qwen3):
    cfg, params = qwen3
    lora = jlora.init(jax.random.key(0), cfg, params, rank=8, alpha=16)
    ids = _ids()
    np.testing.assert_array_equal(np.asarray(jaxft.logits(cfg, params, ids, lora=lora)),
                                  np.asarray(jaxft.logits(cfg, params, ids)))
    assert sorted(p[-1] for p, _ in lora.items()) == sorted(jlora.DEFAULT_TARGETS)
    q = lora.params["model"]["layers"]["self_attn"]["q_proj"]
    assert q["a"].shape == (cfg.num_hidden_layers, cfg.hidden_size, 8)
    assert q["b"].shape == (cfg.num_hidden_layers, 8, cfg.q_size)
    assert not np.any(np.asarray(q["b"]))
    # PEFT's kaiming_uniform(a=sqrt(5)) on A [r, in]: U(-1/sqrt(in), 1/sqrt(in)).
    down = np.asarray(lora.params["model"]["layers"]["mlp"]["down_proj"]["a"])
    bound = 1 / math.sqrt(cfg.intermediate_size)
    assert np.abs(down).max() <= bound
    assert abs(down.std() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)


def test_targets_select_modules_and_unknown_target_is_named(qwen3):
    cfg, params = qwen3
    mlp = jlora.init(jax.random.key(0), cfg, params, rank=2, targets=("mlp.*",))
    assert sorted(p[-1] for p, _ in mlp.items()) == ["down_proj", "gate_proj", "up_proj"]
    q = jlora.init(jax.random.key(0), cfg, params, rank=2, targets="q_proj")
    assert [p for p, _ in q.items()] == [("model", "layers", "self_attn", "q_proj")]
    with pytest.raises(ValueError, match="qkv_proj"):
        jlora.init(jax.random.key(0), cfg, params, targets=("q_proj", "qkv_proj"))


def test_scale_plain_and_rslora():
    assert jlora.LoraConfig(rank=16, alpha=32).scale == 2.0
    assert jlora.LoraConfig(rank=16, alpha=32, use_rslora=True).scale == 8.0
    with pytest.raises(ValueError, match="dropout"):
        jlora.LoraConfig(dropout=1.0)


def test_adapted_logits_equal_merged_weights_and_unmerge_restores(qwen3):
    cfg, params = qwen3
    lora = _with_random_b(jlora.init(jax.random.key(1), cfg, params, rank=4, alpha=8,
                                     targets=("q_proj", "v_proj", "down_proj")))
    # Reference: W + s·A·B computed in float64 numpy, run as a plain model.
    ref_params = params
    for path, ab in lora.items():
        w = np.asarray(paths.get(params, path)["kernel"], np.float64)
        w = w + lora.config.scale * np.asarray(ab["a"], np.float64) @ np.asarray(ab["b"], np.float64)
        ref_params = paths.replace(ref_params, path + ("kernel",), jnp.asarray(w, jnp.float32))
    ids = _ids()
    ours = np.asarray(jaxft.logits(cfg, params, ids, lora=lora))
    ref = np.asarray(jaxft.logits(cfg, ref_params, ids))
    base = np.asarray(jaxft.logits(cfg, params, ids))
    assert np.abs(ours - base).max() > 1e-2  # the adapter matters
    assert np.abs(ours - ref).max() <= 1e-4

    merged = jlora.merge(cfg, params, lora)
    np.testing.assert_allclose(np.asarray(jaxft.logits(cfg, merged, ids)), ref, atol=1e-4, rtol=0)
    restored = jlora.unmerge(cfg, merged, lora)
    for path, _ in lora.items():
        np.testing.assert_allclose(np.asarray(paths.get(restored, path)["kernel"]),
                                   np.asarray(paths.get(params, path)["kernel"]), atol=1e-6, rtol=0)


def test_dropout_hits_the_adapter_branch_only_and_is_unbiased():
    d_in, d_out, rank, p = 8, 4, 2, 0.5
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (3, d_in))
    w = jax.random.normal(k2, (d_in, d_out))
    a = jax.random.normal(k3, (d_in, rank))
    b = jnp.ones((rank, d_out))

    def adapted(key, b):
        return jlora.LoraKernel(w, a, b, key, scale=0.5, dropout=p).dense(x)

    keys = jax.random.split(jax.random.key(1), 2000)
    # With B = 0 dropout cannot show: the frozen path never sees it.
    np.testing.assert_array_equal(np.asarray(adapted(keys[0], jnp.zeros_like(b))), np.asarray(x @ w))
    samples = np.asarray(jax.jit(jax.vmap(lambda k: adapted(k, b)))(keys))
    exact = np.asarray(x @ w + 0.5 * (x @ a) @ b)
    assert np.abs(samples[0] - exact).max() > 1e-3  # a single draw is perturbed
    # Inverted dropout keeps the expectation: mean over draws -> the undropped output.
    stderr = samples.std(0) / math.sqrt(len(keys))
    assert np.all(np.abs(samples.mean(0) - exact) <= 5 * stderr + 1e-6)


def test_apply_without_rng_has_no_dropout(qwen3):
    cfg, params = qwen3
    lora = _with_random_b(jlora.init(jax.random.key(0), cfg, params, rank=4, dropout=0.3))
    ids = jnp.asarray(_ids())

    @jax.jit
    def run(lora_params, rng):
        return forward(cfg, jlora.apply(params, jlora.LoRA(lora_params, lora.config), rng), ids)[0]

    exact = np.asarray(jaxft.logits(cfg, jlora.merge(cfg, params, lora), ids))
    np.testing.assert_allclose(np.asarray(run(lora.params, None)), exact, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(run(lora.params, jax.random.key(3))) - exact).max() > 1e-3


def _train(cfg, params, lora, ids, steps=12, lr=1e-2):
    """AdamW on the LoRA tree only; returns (losses, trained LoRA)."""

    def loss_fn(lora_params):
        adapted = jlora.apply(params, jlora.LoRA(lora_params, lora.config))
        logits = forward(cfg, adapted, ids)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    opt = optax.adamw(lr, weight_decay=0.0)

    @jax.jit
    def step(lora_params, state):
        loss, grads = jax.value_and_grad(loss_fn)(lora_params)
        updates, state = opt.update(grads, state, lora_params)
        return optax.apply_updates(lora_params, updates), state, loss

    lora_params, state = lora.params, opt.init(lora.params)
    losses = []
    for _ in range(steps):
        lora_params, state, loss = step(lora_params, state)
        losses.append(float(loss))
    return losses, jlora.LoRA(lora_params, lora.config)


def test_training_reduces_loss_and_changes_only_lora(qwen3):
    cfg, params = qwen3
    before = jax.tree.map(np.asarray, params)
    lora = jlora.init(jax.random.key(0), cfg, params, rank=8, alpha=16)
    ids = jnp.asarray(_ids())
    losses, trained = _train(cfg, params, lora, ids)
    assert losses[-1] < losses[0] - 0.5, losses
    assert jax.tree.structure(trained.params) == jax.tree.structure(lora.params)
    for (path, new), (_, old) in zip(trained.items(), lora.items()):
        for k in ("a", "b"):
            assert np.abs(np.asarray(new[k]) - np.asarray(old[k])).max() > 1e-4, (path, k)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, params))
    # The trained adapter is what the model now computes.
    final = float(optax.softmax_cross_entropy_with_integer_labels(
        jaxft.logits(cfg, params, ids, lora=trained)[:, :-1], ids[:, 1:]).mean())
    assert final < losses[-1]
