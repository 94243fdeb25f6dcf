import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxft.train import optim


def _cfg(**schedule):
    cfg = optim.default_config()
    cfg.schedule.update(dict(dict(name="constant", peak_lr=1e-2, warmup_steps=0), **schedule))
    return cfg


def _schedule(**fields):
    return optim.make_schedule(ConfigDict(dict(dict(peak_lr=1.0, warmup_steps=10, total_steps=110,
                                                    end_lr_ratio=0.1), **fields)))


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name, expected", [
    # step:          0    5    10   60    110  200
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
    ("warmup_cosine", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
])
def test_schedules_hit_documented_values(name, expected):
    schedule = _schedule(name=name)
    got = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_cosine_differs_from_linear_between_key_steps():
    # a quarter into the decay: cosine 0.1 + 0.9 * (1 + cos(pi/4)) / 2, linear 0.1 + 0.9 * 0.75
    np.testing.assert_allclose(float(_schedule(name="warmup_cosine")(35)), 0.1 + 0.45 * (1 + np.cos(np.pi / 4)),
                               rtol=1e-6)
    np.testing.assert_allclose(float(_schedule(name="linear")(35)), 0.775, rtol=1e-6)


@pytest.mark.parametrize("cycle_field", [dict(restart_period=50), dict(num_cycles=2)])
def test_cosine_restarts_restart_at_peak(cycle_field):
    schedule = _schedule(name="cosine_restarts", **cycle_field)
    got = [float(schedule(s)) for s in (5, 10, 35, 59, 60, 85, 110, 300)]
    mid = 0.55
    last = 0.1 + 0.45 * (1 + np.cos(np.pi * 49 / 50))
    np.testing.assert_allclose(got, [0.5, 1.0, mid, last, 1.0, mid, 0.1, 0.1], atol=1e-6)


def test_schedule_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"optim\.schedule\.name='cosine'.*warmup_cosine"):
        _schedule(name="cosine")
    with pytest.raises(ValueError, match="total_steps=10 must exceed warmup_steps=10"):
        _schedule(name="linear", total_steps=10)
    with pytest.raises(ValueError, match="exactly one of restart_period or num_cycles"):
        _schedule(name="cosine_restarts")
    with pytest.raises(ValueError, match="end_lr_ratio"):
        _schedule(name="linear", end_lr_ratio=2.0)


# ----------------------------------------------------------------------------- groups and decay


def _by_top_key(path, leaf):
    return path[0]


def test_group_learning_rates_scale_the_first_adam_step():
    params = {"lora": {"a": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((3, 4))}}
    cfg = _cfg(peak_lr=1e-2)
    cfg.groups = dict(lora=dict(lr=3e-2), head=dict(peak_lr=1e-3))
    tx = optim.make_optimizer(cfg, params, _by_top_key)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), params)  # identical grads for both groups
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    lora_step, head_step = np.asarray(updates["lora"]["a"]), np.asarray(updates["head"]["kernel"])
    # Adam's first step is -lr * g / (|g| + eps): the group's own rate.
    np.testing.assert_allclose(lora_step, -3e-2, rtol=1e-6)
    np.testing.assert_allclose(head_step, -1e-3, rtol=1e-6)
    rates = optim.current_learning_rates(state)
    assert set(rates) == {"lora", "head"}
    np.testing.assert_allclose([float(rates["lora"]), float(rates["head"])], [3e-2, 1e-3], rtol=1e-6)


def test_group_schedules_keep_their_shape():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    cfg = _cfg(name="linear", peak_lr=1.0, warmup_steps=2, total_steps=6)
    cfg.groups = dict(b=dict(lr=0.1))
    tx = optim.make_optimizer(cfg, params, _by_top_key)
    state, seen, update = tx.init(params), [], jax.jit(tx.update)
    for _ in range(4):
        _, state = update(jax.tree.map(jnp.ones_like, params), state, params)
        seen.append({k: float(v) for k, v in optim.current_learning_rates(state).items()})
    np.testing.assert_allclose([s["a"] for s in seen], [0.0, 0.5, 1.0, 0.75], atol=1e-6)
    np.testing.assert_allclose([s["b"] for s in seen], [0.0, 0.05, 0.1, 0.075], atol=1e-7)


def test_unknown_group_names_list_the_real_groups():
    params = {"lora": {"a": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
    cfg = _cfg()
    cfg.groups = dict(lorra=dict(lr=1e-3))
    with pytest.raises(ValueError, match=r"\['lorra'\].*\['head', 'lora'\]"):
        optim.make_optimizer(cfg, params, _by_top_key)
    cfg.groups = dict(lora=dict(learning_rate=1e-3))
    with pytest.raises(ValueError, match=r"optim\.groups\.lora: unknown keys \['learning_rate'\]"):
        optim.make_optimizer(cfg, params, _by_top_key)


def test_weight_decay_skips_masked_leaves():
    params = {
        "model": {
            "embed_tokens": {"weight": jnp.full((8, 4), 2.0)},
            "layers": {"q_proj": {"kernel": jnp.full((2, 4, 4), 2.0), "bias": jnp.full((2, 4), 2.0)},
                       "input_layernorm": {"weight": jnp.full((2, 4), 2.0)}},
            "norm": {"weight": jnp.full((4,), 2.0)},
        },
        "lm_head": {"kernel": jnp.full((4, 8), 2.0)},
        "soft_prompt": {"tokens": jnp.full((3, 4), 2.0)},
    }
    cfg = _cfg(peak_lr=0.1)
    cfg.weight_decay = 0.5
    zero_grads = jax.tree.map(jnp.zeros_like, params)

    def step(decay_embeddings):
        def no_decay(path, leaf):  # as a recipe declares it: exact module names, no substrings
            embedding = path[-2] in ("embed_tokens", "soft_prompt")
            return path[-1] == "bias" or path[-2] in ("input_layernorm", "norm") or (embedding and not decay_embeddings)

        tx = optim.make_optimizer(cfg, params, no_decay=no_decay)
        return jax.jit(tx.update)(zero_grads, tx.init(params), params)[0]

    updates = step(False)
    # Decoupled decay with zero gradients: update = -lr * wd * param = -0.1.
    np.testing.assert_allclose(updates["model"]["layers"]["q_proj"]["kernel"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["lm_head"]["kernel"], -0.1, rtol=1e-6)
    for leaf in (updates["model"]["layers"]["q_proj"]["bias"], updates["model"]["layers"]["input_layernorm"]["weight"],
                 updates["model"]["norm"]["weight"], updates["model"]["embed_tokens"]["weight"],
                 updates["soft_prompt"]["tokens"]):
        assert np.all(np.asarray(leaf) == 0.0)
    with_embeddings = step(True)
    np.testing.assert_allclose(with_embeddings["model"]["embed_tokens"]["weight"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(with_embeddings["soft_prompt"]["tokens"], -0.1, rtol=1e-6)
    assert np.all(np.asarray(with_embeddings["model"]["norm"]["weight"]) == 0.0)


def test_global_norm_clipping_runs_before_adam():
    params = {"w": jnp.zeros((2,))}
    cfg = _cfg(peak_lr=1.0)
    cfg.max_grad_norm = 1.0
    cfg.b1, cfg.b2 = 0.0, 0.0  # Adam reduces to g / (|g| + eps): eps makes the clipped scale visible
    cfg.eps = 1.0
    tx = optim.make_optimizer(cfg, params)
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
    clipped = np.array([0.6, 0.8])  # norm 50 -> 1
    np.testing.assert_allclose(updates["w"], -clipped / (clipped + 1.0), rtol=1e-6)


# ----------------------------------------------------------------------------- EMA


def test_ema_update_matches_its_definition():
    ema = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    params = {"a": jnp.array([3.0, -2.0]), "b": jnp.array(0.0)}
    out = jax.jit(optim.ema_update)(ema, params, 0.9)
    np.testing.assert_allclose(out["a"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)
    np.testing.assert_allclose(out["b"], 3.6, rtol=1e-6)
    # n updates towards fixed params: ema_n = p + decay^n (ema_0 - p).
    state = ema
    for _ in range(20):
        state = optim.ema_update(state, params, 0.8)
    np.testing.assert_allclose(state["a"], np.array([3.0, -2.0]) + 0.8 ** 20 * np.array([-2.0, 4.0]), rtol=1e-5)


def test_ema_keeps_its_dtype():
    ema = {"w": jnp.zeros(3, jnp.float32)}
    out = optim.ema_update(ema, {"w": jnp.ones(3, jnp.bfloat16)}, jnp.float32(0.75))
    assert out["w"].dtype == jnp.float32
    np.testing.assert_allclose(out["w"], 0.25)
