"""The decoder's parameter layout and random parameters, both read from ``CausalLM(cfg).init``.

The module tree is the one declaration of which tensors a config has, their shapes and their
logical axis names; ``jaxft/checkpoint/hf_names.py`` maps its paths to Hugging Face names and
``jaxft/train/sharding.py`` reads the axes from here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxft.models.config import DecoderConfig
from jaxft.models.modules import CausalLM

_ONE_TOKEN = (1, 1)  # what ``init`` runs the model on: the parameters do not depend on it


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """One parameter as ``CausalLM(cfg).init`` declares it."""

    path: tuple[str, ...]
    shape: tuple[int, ...]  # the layer axis first for the scanned (stacked) layers
    logical_axes: tuple[str | None, ...]


def _boxed_init(cfg: DecoderConfig, rng: jax.Array, std: float) -> dict[str, Any]:
    """``CausalLM.init``'s parameters, each leaf boxed with its logical axis names."""
    return CausalLM(cfg, init_std=std).init(rng, jnp.zeros(_ONE_TOKEN, jnp.int32))["params"]


@functools.lru_cache(maxsize=64)
def _boxed_shapes(cfg: DecoderConfig) -> dict[str, Any]:
    return jax.eval_shape(lambda: _boxed_init(cfg, jax.random.key(0), 0.02))


def param_layout(cfg: DecoderConfig) -> dict[tuple[str, ...], ParamLayout]:
    """Every parameter of the decoder for ``cfg`` (path -> layout), read from the module tree."""
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(_boxed_shapes(cfg), is_leaf=is_box)[0]:
        names = tuple(k.key for k in path)
        out[names] = ParamLayout(names, tuple(leaf.value.shape), tuple(leaf.names))
    return out


def logical_axes(cfg: DecoderConfig) -> dict[str, Any]:
    """The logical axis names of every parameter, as ``CausalLM`` declares them (a tree of tuples)."""
    return jax.tree.map(lambda spec: tuple(spec), nn.get_partition_spec(_boxed_shapes(cfg)),
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init(cfg: DecoderConfig, rng: jax.Array, dtype, std: float) -> dict[str, Any]:
    # Compiled, so each tensor is drawn straight into ``dtype`` (no float32 copy of the model).
    params = nn.unbox(_boxed_init(cfg, rng, std))
    return jax.tree.map(lambda x: x.astype(dtype), params)


def init_params(cfg: DecoderConfig, rng: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict[str, Any]:
    """``CausalLM(cfg).init``'s parameters in ``dtype``: Normal(0, std) matrices, ones for norms, zeros
    for biases (as HF initialises)."""
    return _init(cfg, rng, jnp.dtype(dtype), float(std))


def abstract_params(cfg: DecoderConfig, dtype=jnp.float32) -> dict[str, Any]:
    """Shapes and dtypes only (``jax.ShapeDtypeStruct``), for ahead-of-time compilation."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)), nn.unbox(_boxed_shapes(cfg)))
