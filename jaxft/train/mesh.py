"""Device mesh from the config, and logical-axis -> mesh-axis rules.

The same code runs data-parallel, FSDP or tensor-parallel: only
``config.mesh.shape`` and ``config.mesh.rules`` change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used on parameter and batch dimensions -> mesh axes.
DEFAULT_RULES: dict[str, tuple[str, ...] | str | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "lora_rank": None,
    "seq": None,
}


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices; one axis may be -1 (takes the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config key 'mesh.shape': unknown axes {sorted(unknown)} (use {MESH_AXES})")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError("config key 'mesh.shape': at most one axis may be -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"config key 'mesh.shape': {dict(shape)} does not divide {len(devices)} devices")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"config key 'mesh.shape': {sizes} needs {math.prod(sizes.values())} devices, "
                         f"there are {len(devices)}")
    grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def flax_rules(rules: Mapping[str, tuple[str, ...] | str | None]) -> tuple[tuple[str, Any], ...]:
    """``config.mesh.rules`` (a dict) as the (logical, mesh) pairs Flax's partitioning helpers take."""
    return tuple((name, tuple(target) if isinstance(target, list) else target) for name, target in rules.items())


def partition_spec(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                   rules: Mapping[str, tuple[str, ...] | str | None]) -> PartitionSpec:
    """Map logical axes to a PartitionSpec: each name's mesh axes by Flax's ``logical_to_mesh_axes``,
    then a dimension stays unsharded where those mesh axes have one device, do not divide it, or
    were already taken by an earlier dimension (Flax sees neither shapes nor repeated names).
    """
    if logical_axes is None:
        return PartitionSpec()
    pairs = flax_rules(rules)
    out: list = []
    used: set[str] = set()
    for name, dim in zip(logical_axes, shape):
        target = nn.logical_to_mesh_axes((name,), pairs)[0] if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, logical_axes, shape, rules) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(logical_axes, shape, mesh, rules))


def batch_sharding(mesh: Mesh, rules, shape: Sequence[int]) -> NamedSharding:
    """Split the leading (global batch) dimension over the batch mesh axes."""
    return named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape, rules)
