"""The Yes/No decision at the answer position: two logits per example, never the full vocabulary."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxft.models.decoder import forward, lm_head_weight


def answer_hidden(hidden: jax.Array, answer_index: jax.Array) -> jax.Array:
    """[batch, hidden]: the hidden state at each example's answer position."""
    return jnp.take_along_axis(hidden, answer_index[:, None, None].astype(jnp.int32), axis=1)[:, 0]


def yes_no_logits(cfg, params, hidden: jax.Array, answer_index: jax.Array, yes_id: int, no_id: int,
                  dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """(Yes logit, No logit) per example, in float32."""
    head = lm_head_weight(cfg, params, dtype)[:, jnp.array([yes_id, no_id])]  # [hidden, 2]
    logits = jnp.matmul(answer_hidden(hidden, answer_index).astype(dtype), head,
                        preferred_element_type=jnp.float32)
    return logits[:, 0], logits[:, 1]


@functools.partial(jax.jit, static_argnames=("cfg", "yes_id", "no_id", "dtype"))
def p_yes(cfg, params, input_ids, attention_mask, answer_index, *, yes_id: int, no_id: int, dtype=jnp.float32):
    """p(Yes) / (p(Yes) + p(No)) at the answer position of each row (right-padded batch)."""
    hidden, _ = forward(cfg, params, input_ids, attention_mask, output="hidden", dtype=dtype)
    yes, no = yes_no_logits(cfg, params, hidden, answer_index, yes_id, no_id, dtype)
    return jax.nn.sigmoid(yes - no)
