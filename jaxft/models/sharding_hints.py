"""Sharding hints for activations, read from the mesh the caller set with ``jax.set_mesh``.

Under FSDP the weights are split over the ``fsdp`` axis; left alone, GSPMD may
follow the weights and keep activations whole on every device (all-reducing
them), which multiplies activation memory by the device count. Pinning the
residual stream's batch dimension to the batch mesh axes keeps every device on
its own rows. Without a mesh (or on one device) the hint is a no-op.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec

BATCH_AXES = ("data", "fsdp")  # the mesh axes jaxft.train.mesh.DEFAULT_RULES gives the batch


def constrain_batch(x: jax.Array) -> jax.Array:
    """``x`` [batch, ...] with its batch dimension split over the current mesh's batch axes."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    spec = PartitionSpec(axes if len(axes) > 1 else axes[0], *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)
