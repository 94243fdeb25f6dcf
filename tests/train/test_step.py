"""The jitted train step: exact gradient accumulation, non-finite skipping, EMA, frozen trees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxft.train.step import init_state, make_step_fn


def _problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    frozen = {"x_scale": jnp.float32(2.0)}
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32), "y": rng.normal(size=(8, 3)).astype(np.float32),
             # uneven token weights across micro-batches: equal-weight averaging would be wrong
             "weight": np.array([1, 1, 1, 1, 3, 0, 2, 5], np.float32)}

    def loss_fn(p, f, b, key):
        err = ((b["x"] * f["x_scale"]) @ p["w"] - b["y"]) ** 2
        per_row = err.sum(-1) * b["weight"]
        return per_row.sum(), b["weight"].sum(), {"rows": jnp.float32(b["x"].shape[0])}

    return params, frozen, batch, loss_fn


def _run(accum, batch_override=None, ema=0.0, steps=3):
    params, frozen, batch, loss_fn = _problem()
    batch = batch_override or batch
    opt = optax.adamw(1e-2)
    step = jax.jit(make_step_fn(loss_fn, opt, accum_steps=accum, ema_decay=ema or 0.999))
    state = init_state(params, opt, 0, ema=bool(ema))
    for _ in range(steps):
        state, metrics = step(state, frozen, batch)
    return state, metrics


def test_accumulated_micro_batches_equal_one_large_batch():
    one, m1 = _run(accum=1)
    four, m4 = _run(accum=4)
    np.testing.assert_allclose(four["params"]["w"], one["params"]["w"], atol=1e-6)
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    assert float(m4["rows"]) == 8  # metric sums add up over micro-batches


def test_non_finite_batch_skips_the_update():
    params, _, batch, _ = _problem()
    bad = dict(batch, x=batch["x"].copy())
    bad["x"][3, 1] = np.nan
    state, metrics = _run(accum=1, batch_override=bad, steps=1)
    assert not bool(metrics["finite"])
    np.testing.assert_array_equal(state["params"]["w"], params["w"])
    assert int(state["step"]) == 1


def test_ema_follows_its_definition():
    decay = 0.9
    params, frozen, batch, loss_fn = _problem()
    opt = optax.adamw(1e-2)
    step = jax.jit(make_step_fn(loss_fn, opt, ema_decay=decay))
    state = init_state(params, opt, 0, ema=True)
    expected = np.asarray(params["w"])
    for _ in range(3):
        state, _ = step(state, frozen, batch)
        expected = decay * expected + (1 - decay) * np.asarray(state["params"]["w"])
    np.testing.assert_allclose(state["ema"]["w"], expected, rtol=1e-6)


def _probe(calls: list):
    """Identity whose backward pass is only built when a gradient is asked for its input."""
    @jax.custom_vjp
    def probe(x):
        return x

    def fwd(x):
        calls.append("forward for a gradient")
        return x, None

    probe.defvjp(fwd, lambda _, g: (g,))
    return probe


def test_frozen_tree_gets_no_gradient_or_optimizer_state():
    params, frozen, batch, loss_fn = _problem()
    opt = optax.adamw(1e-2)
    state = init_state(params, opt, 0, ema=False)
    leaves = jax.tree.leaves(state["opt_state"])
    assert sum(x.size for x in leaves) == 1 + 2 * params["w"].size  # count + mu + nu of w only

    def probed(which):
        calls = []
        probe = _probe(calls)

        def loss(p, f, b, key):
            p, f = ({"w": probe(p["w"])}, f) if which == "params" else (p, {"x_scale": probe(f["x_scale"])})
            return loss_fn(p, f, b, key)

        jax.jit(make_step_fn(loss, opt)).lower(state, frozen, batch)
        return calls

    assert probed("params")  # the probe sees a gradient being taken ...
    assert probed("frozen") == []  # ... and none is ever computed for the frozen tree
