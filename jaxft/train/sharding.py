"""Logical axis names for every leaf of the trees the engine places.

Decoder weights take their names from the HF name table; LoRA factors take the
names of the kernel they adapt (``a``: its input dim, ``b``: its output dim),
so an adapter is always sharded like its base. Leaves nobody named (projectors,
learned tokens, quantized blocks) get a generic rule: small ones replicated,
large ones split over ``fsdp`` on their largest dimension.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from jaxft.checkpoint.hf_names import param_specs
from jaxft.models.config import DecoderConfig
from jaxft.train.mesh import partition_spec

_REPLICATE_BELOW = 1 << 16  # elements; sharding tiny leaves only costs collectives


@functools.cache
def _decoder_axes() -> dict[tuple[str, str], tuple[str | None, ...]]:
    """(module, leaf) -> logical axes, from a config with every optional tensor."""
    cfg = DecoderConfig(model_type="qwen3", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                        num_attention_heads=1, num_key_value_heads=1, head_dim=8, attention_bias=True,
                        o_proj_bias=True, mlp_bias=True, qk_norm=True)
    return {spec.path[-2:]: spec.logical_axes for spec in param_specs(cfg)}


def _key_name(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def logical_axes_for(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str | None, ...] | None:
    table = _decoder_axes()
    if len(path) >= 2:
        module, leaf = path[-2], path[-1]
        if (module, leaf) in table and len(table[(module, leaf)]) == len(shape):
            return table[(module, leaf)]
        if leaf in ("a", "b") and (module, "kernel") in table:
            layers_ax, ax_in, ax_out = table[(module, "kernel")]
            axes = (layers_ax, ax_in, "lora_rank") if leaf == "a" else (layers_ax, "lora_rank", ax_out)
            if len(axes) == len(shape):
                return axes
    return None


def _generic_axes(shape: tuple[int, ...]) -> tuple[str | None, ...] | None:
    size = 1
    for d in shape:
        size *= d
    if size < _REPLICATE_BELOW or not shape:
        return None
    largest = max(range(len(shape)), key=lambda i: shape[i])
    return tuple("embed" if i == largest else None for i in range(len(shape)))


def tree_shardings(tree: Any, mesh: Mesh, rules, axes_tree: Any | None = None) -> Any:
    """A NamedSharding for every leaf of ``tree`` (arrays or ShapeDtypeStructs)."""
    flat_axes = None
    if axes_tree is not None:
        flat_axes = jax.tree.leaves(axes_tree, is_leaf=lambda x: x is None or isinstance(x, tuple))

    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for i, (path, leaf) in enumerate(leaves_with_paths):
        shape = tuple(leaf.shape)
        names = tuple(_key_name(k) for k in path)
        axes = flat_axes[i] if flat_axes is not None else None
        if axes is None:
            axes = logical_axes_for(names, shape)
        if axes is None:
            axes = _generic_axes(shape)
        out.append(NamedSharding(mesh, partition_spec(axes, shape, mesh, rules)))
    return jax.tree_util.tree_unflatten(treedef, out)
