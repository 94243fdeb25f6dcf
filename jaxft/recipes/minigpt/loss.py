"""Next-token loss sums for minigpt, with optional label smoothing (as torch's ``cross_entropy``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_loss_sums(logits: jnp.ndarray, targets: jnp.ndarray, mask: jnp.ndarray, smoothing: float
                       ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``(sum of per-token losses, token count, correct argmax count)`` over ``mask``.

    Per token: ``(1 - s) * -log p(target) + s * mean_v(-log p(v))`` -- the uniform-mixture target of
    ``torch.nn.functional.cross_entropy(label_smoothing=s)``.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    per_token = (1.0 - smoothing) * nll - smoothing * logp.mean(-1) if smoothing else nll
    live = mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * live
    return jnp.sum(per_token * live), jnp.sum(live), jnp.sum(correct)
