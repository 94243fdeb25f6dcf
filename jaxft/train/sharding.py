"""Logical axis names for every leaf of the trees the engine places.

Decoder weights take the names the modules declare (``nn.LogicallyPartitioned``
boxes in ``jaxft/models/modules.py``; ``nn.scan`` adds ``"layers"``): a boxed tree
(what ``CausalLM.init`` returns) is placed by its own boxes, a plain one by the
boxes ``CausalLM.init`` declares at the leaf's parameter path (the decoder may sit
under any prefix: ``encoder/``, an optimizer state). LoRA factors take the names
of the kernel they adapt (``a``: its input dim, ``b``: its output dim), so an
adapter is always sharded like its base. Leaves nobody named (projectors, learned
tokens, quantized blocks) get a generic rule: small ones replicated, large ones
split over ``fsdp`` on their largest dimension. ``jaxft.train.mesh.partition_spec``
maps names to mesh axes.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding

from jaxft.models.config import DecoderConfig
from jaxft.models.init import param_layout
from jaxft.train.mesh import partition_spec

_REPLICATE_BELOW = 1 << 16  # elements; sharding tiny leaves only costs collectives


# A config with every optional tensor (biases, q/k norms, LayerNorm biases, an untied head): a tensor's
# axes do not depend on the config, only whether it exists does, so its tree holds every decoder path.
_EVERY_TENSOR = DecoderConfig(model_type="qwen3", vocab_size=8, hidden_size=8, intermediate_size=8,
                              num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=8,
                              attention_bias=True, o_proj_bias=True, mlp_bias=True, qk_norm=True,
                              norm_type="layer_norm")


@functools.cache
def _decoder_axes() -> dict[tuple[str, ...], tuple[str | None, ...]]:
    """Parameter path -> logical axes, read from ``CausalLM.init``'s boxes (``jaxft.models.init.param_layout``)."""
    return {path: p.logical_axes for path, p in param_layout(_EVERY_TENSOR).items()}


def _key_name(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _declared(path: tuple[str, ...]) -> tuple[str | None, ...] | None:
    """The axes of the decoder parameter that ``path`` ends in (the decoder may sit under any prefix)."""
    table = _decoder_axes()
    for start in range(len(path)):
        if path[start:] in table:
            return table[path[start:]]
    return None


def logical_axes_for(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str | None, ...] | None:
    axes = _declared(path)
    if axes is not None:
        return axes if len(axes) == len(shape) else None
    if path and path[-1] in ("a", "b"):
        base = _declared(path[:-1] + ("kernel",))
        if base is not None:
            layers_ax, ax_in, ax_out = base if len(base) == 3 else (None,) + tuple(base)
            axes = (layers_ax, ax_in, "lora_rank") if path[-1] == "a" else (layers_ax, "lora_rank", ax_out)
            axes = axes if len(base) == 3 else axes[1:]
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


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def leaf_sharding(path: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh, rules,
                  axes: tuple[str | None, ...] | None = None) -> NamedSharding:
    """The NamedSharding of one leaf: ``axes`` if given, else the declared names of ``path``, else the generic rule."""
    if axes is None:
        axes = logical_axes_for(path, shape)
    if axes is None:
        axes = _generic_axes(shape)
    return NamedSharding(mesh, partition_spec(axes, shape, mesh, rules))


def tree_shardings(tree: Any, mesh: Mesh, rules, axes_tree: Any | None = None) -> Any:
    """A NamedSharding for every leaf of ``tree`` (arrays or ShapeDtypeStructs, or ``nn.LogicallyPartitioned``
    boxes of them: those get their own axes, and the result has a sharding where the box was)."""
    flat_axes = None
    if axes_tree is not None:
        flat_axes = jax.tree.leaves(axes_tree, is_leaf=lambda x: x is None or isinstance(x, tuple))

    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)
    out = []
    for i, (path, leaf) in enumerate(leaves_with_paths):
        names = tuple(_key_name(k) for k in path)
        axes = flat_axes[i] if flat_axes is not None else None
        if _is_box(leaf):
            axes, leaf = tuple(leaf.names), leaf.value
        out.append(leaf_sharding(names, tuple(leaf.shape), mesh, rules, axes))
    return jax.tree_util.tree_unflatten(treedef, out)
