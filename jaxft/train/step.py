"""The train step: one ``jax.jit`` with explicit shardings and donated state.

Whatever the recipe marks trainable is differentiated and updated; frozen
trees are read-only inputs with no gradients and no optimizer state. Micro-
batches are accumulated inside the step with ``lax.scan`` over token-weighted
loss sums, so k micro-batches give exactly the update of one k-times batch.
A non-finite loss or gradient skips the update instead of poisoning params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxft.train.loss import all_finite
from jaxft.train.optim import ema_update
from jaxft.train.task import RESERVED_METRICS

PyTree = Any
TrainState = dict[str, Any]  # {"step", "params", "opt_state", "ema" (optional), "rng"}


def init_state(params: PyTree, optimizer: optax.GradientTransformation, seed: int, ema: bool) -> TrainState:
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        "rng": jax.random.PRNGKey(seed),
    }
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def _split_micro(batch: dict, accum_steps: int) -> dict:
    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by optim.accum_steps={accum_steps}")
        return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

    return jax.tree.map(split, batch)


def make_step_fn(loss_fn: Callable, optimizer: optax.GradientTransformation, *, accum_steps: int = 1,
                 ema_decay: float = 0.999) -> Callable:
    """The pure step ``(state, frozen, batch) -> (state, metrics)`` (not yet jitted).

    ``loss_fn(trainable, frozen, batch, rng) -> (loss_sum, weight_sum, metric_sums)``.
    """

    def with_aux(p, f, mb, key):
        loss_sum, weight_sum, metrics = loss_fn(p, f, mb, key)
        clash = RESERVED_METRICS & set(metrics)
        if clash:  # checked while tracing: the step's own entries would silently overwrite them
            raise ValueError(f"the recipe's loss_fn returns metrics named {sorted(clash)}, which the train step "
                             f"reports itself ({', '.join(sorted(RESERVED_METRICS))}); rename them")
        return loss_sum, (weight_sum, metrics)

    grad_fn = jax.value_and_grad(with_aux, has_aux=True)

    def step_fn(state: TrainState, frozen: PyTree, batch: dict):
        rng, step_rng = jax.random.split(state["rng"])
        params = state["params"]
        micro_batches = _split_micro(batch, accum_steps)
        keys = jax.random.split(step_rng, accum_steps)

        def micro(carry, xs):
            (loss_sum, (weight_sum, metrics)), grads = grad_fn(params, frozen, *xs)
            return jax.tree.map(jnp.add, carry, (grads, loss_sum, weight_sum, metrics)), None

        first = jax.tree.map(lambda x: x[0], micro_batches)
        metric_shapes = jax.eval_shape(with_aux, params, frozen, first, keys[0])[1][1]
        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes))
        (grads, loss_sum, weight_sum, metrics), _ = jax.lax.scan(micro, zeros, (micro_batches, keys))

        denom = jnp.maximum(weight_sum, 1e-9)
        loss = loss_sum / denom
        grads = jax.tree.map(lambda g: g / denom, grads)
        finite = jnp.isfinite(loss) & all_finite(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "opt_state": keep(opt_state, state["opt_state"]),
            "rng": rng,
        }
        if "ema" in state:
            new_state["ema"] = keep(ema_update(state["ema"], new_state["params"], ema_decay), state["ema"])
        out = {"loss": loss, "weight_sum": weight_sum, "grad_norm": optax.tree.norm(grads),
               "finite": finite, **metrics}
        return new_state, out

    return step_fn


def jit_step(step_fn: Callable, state_shardings, frozen_shardings, batch_shardings) -> Callable:
    """Compile with explicit in/out shardings; the state buffers are donated."""
    return jax.jit(step_fn, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))
