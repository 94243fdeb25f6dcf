"""Random parameters for a config: from-scratch training, benchmarks, plans."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxft.models.config import DecoderConfig


def init_params(cfg: DecoderConfig, rng: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict[str, Any]:
    """Normal(0, std) matrices, ones for norms, zeros for biases (as HF initialises)."""
    from jaxft.checkpoint.hf_names import param_specs  # the layout table lives with the HF names

    params: dict[str, Any] = {}
    specs = param_specs(cfg)
    for spec, key in zip(specs, jax.random.split(rng, len(specs))):
        leaf = spec.path[-1]
        if leaf == "bias":
            value = jnp.zeros(spec.shape, dtype)
        elif "norm" in spec.path[-2]:
            value = jnp.ones(spec.shape, dtype)
        else:
            value = (std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)
        node = params
        for k in spec.path[:-1]:
            node = node.setdefault(k, {})
        node[leaf] = value
    return params


def abstract_params(cfg: DecoderConfig, dtype=jnp.float32) -> dict[str, Any]:
    """Shapes and dtypes only (``jax.ShapeDtypeStruct``), for ahead-of-time compilation."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), dtype))
