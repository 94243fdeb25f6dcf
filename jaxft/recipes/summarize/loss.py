"""The boundary-weighted summarisation loss, expressed as per-token weights for ``causal_lm_loss``.

The loss of a batch with target positions V (the loss mask) is

    sum_V CE_t / |V|  +  loss_weight * sum_V w_t * CE_t / |V|

where ``w_t = position_weight`` inside a boundary window and 1 elsewhere. A boundary window opens
at every target position whose previous position is not a target (the first summary token after
the prompt, or after a gap) and covers that position and the following ``window - 1`` positions
that are targets. Both terms share the divisor |V|, so the loss is one weighted sum,
``sum_V (1 + loss_weight * w_t) * CE_t / |V|``: the weights returned here, with ``|V| =
sum(loss_mask)`` as the divisor (not the sum of the weights).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def boundary_token_weights(loss_mask: Any, window: int = 4, position_weight: float = 2.0,
                           loss_weight: float = 0.1) -> Any:
    """float32 ``[batch, time]`` token weights (0 off the mask) for the boundary-weighted loss.

    ``loss_mask[b, t] = 1`` marks token t of row b as a target, in the batch layout (targets
    aligned with the tokens they predict, before the shift to logits). Position 0 has no
    previous position and never opens a window (the reference scans from position 1; the batch
    layout never makes position 0 a target anyway). A numpy mask gives a numpy array, a jax
    array (also under ``jit``) gives a jax array.
    """
    if int(window) < 1:
        raise ValueError(f"boundary window must be at least 1 position, got {window}")
    xp = jnp if isinstance(loss_mask, jax.Array) else np
    mask = xp.asarray(loss_mask) != 0
    if mask.ndim != 2:
        raise ValueError(f"loss_mask must be [batch, time], got shape {tuple(mask.shape)}")
    previous = xp.pad(mask[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    starts = mask & ~previous
    in_window = starts
    for k in range(1, min(int(window), mask.shape[1])):  # positions k after a start
        in_window = in_window | xp.pad(starts[:, :-k], ((0, 0), (k, 0)), constant_values=False)
    w = xp.where(in_window, xp.float32(position_weight), xp.float32(1.0))
    return xp.where(mask, 1.0 + xp.float32(loss_weight) * w, 0.0).astype(xp.float32)
