"""LoRA adapters as a separate parameter tree.

``LoRA.params`` mirrors the base parameter paths: for every targeted module,
``lora.params[...][module] = {"a": [L, in, r], "b": [L, r, out]}`` sits at the
same path as the base ``params[...][module]["kernel"]`` ([L, in, out]), so the
trainer can shard ``a`` like the kernel's input axis and ``b`` like its output
axis. ``apply`` swaps each targeted kernel for a ``LoraKernel`` for one step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from jaxft.checkpoint.hf_names import spec_by_path
from jaxft.lora.kernels import LoraKernel
from jaxft.models import paths
from jaxft.models.config import DecoderConfig

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0
    use_rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank

    def __post_init__(self):
        object.__setattr__(self, "targets", (self.targets,) if isinstance(self.targets, str) else tuple(self.targets))
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA targets are empty")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LoRA:
    params: dict[str, Any]
    config: LoraConfig = dataclasses.field(metadata=dict(static=True))

    def items(self) -> list[tuple[tuple[str, ...], dict[str, jax.Array]]]:
        """(module path, {"a", "b"}) for every adapted module."""
        return list(_adapter_leaves(self.params))

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.params))


def _adapter_leaves(tree: dict[str, Any], prefix: paths.ModulePath = ()) -> Iterator[tuple[paths.ModulePath, Any]]:
    """(module path, adapter dict) for an adapter tree whose leaves are ``{"a", "b"}`` dicts."""
    for key in sorted(tree):
        node = tree[key]
        if isinstance(node, dict) and "a" in node and "b" in node:
            yield prefix + (key,), node
        elif isinstance(node, dict):
            yield from _adapter_leaves(node, prefix + (key,))


def _kernel_at(params: dict[str, Any], path: tuple[str, ...]):
    try:
        return paths.get(params, path)["kernel"]
    except KeyError:
        raise ValueError(f"the LoRA adapts '{'/'.join(path)}', which the base parameters do not have") from None


def _check_shapes(cfg: DecoderConfig, path: tuple[str, ...], kernel_shape, a_shape=None, b_shape=None) -> None:
    spec = spec_by_path(cfg).get(path + ("kernel",))
    where = "/".join(path)
    if spec is None:
        raise ValueError(f"'{where}' is not a kernel of a {cfg.model_type} model")
    if tuple(kernel_shape) != spec.shape:
        raise ValueError(f"'{where}/kernel' has shape {tuple(kernel_shape)}, the config implies {spec.shape}")
    lead, d_in, d_out = spec.shape[:-2], spec.shape[-2], spec.shape[-1]
    if a_shape is not None and (tuple(a_shape[:-1]) != lead + (d_in,) or tuple(b_shape[:-2]) != lead
                                or tuple(b_shape[-1:]) != (d_out,) or a_shape[-1] != b_shape[-2]):
        raise ValueError(f"'{where}': adapter shapes a={tuple(a_shape)}, b={tuple(b_shape)} do not fit "
                         f"the kernel {spec.shape}")


def init(rng: jax.Array, cfg: DecoderConfig, params: dict[str, Any], rank: int = 16, alpha: float = 32.0,
         targets: tuple[str, ...] = DEFAULT_TARGETS, dropout: float = 0.0, use_rslora: bool = False,
         dtype=jnp.float32) -> LoRA:
    """Fresh adapters for every kernel whose module matches a target.

    ``a`` is uniform in ±1/sqrt(in) (what PEFT's default kaiming-uniform with
    a=sqrt(5) amounts to), ``b`` is zero, so the adapted model starts out equal
    to the base. ``params`` may be quantized or abstract (only shapes are read).
    """
    config = LoraConfig(rank, alpha, targets, dropout, use_rslora)
    selected = paths.select(params, config.targets)
    shapes = []
    for path in selected:
        shapes.append(tuple(_kernel_at(params, path).shape))
        _check_shapes(cfg, path, shapes[-1])
    adapters: dict[str, Any] = {}
    for path, ab in zip(selected, _fresh_adapters(rng, tuple(shapes), rank, jnp.dtype(dtype))):
        adapters = _put(adapters, path, ab)
    return LoRA(adapters, config)


# One compiled program and a single random draw for all adapters: threefry is
# slow to compile, once per shape would dominate start-up on small models.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fresh_adapters(rng, shapes, rank, dtype):
    sizes = [math.prod(shape[:-1]) * rank for shape in shapes]
    u = jax.random.uniform(rng, (sum(sizes),), jnp.float32, -1.0, 1.0)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        *lead, d_in, d_out = shape
        a = u[start:start + size].reshape(*lead, d_in, rank) / math.sqrt(d_in)
        out.append({"a": a.astype(dtype), "b": jnp.zeros((*lead, rank, d_out), dtype)})
        start += size
    return out


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return tree


def apply(params: dict[str, Any], lora: LoRA, rng: jax.Array | None = None) -> dict[str, Any]:
    """The base params with every adapted kernel replaced by a ``LoraKernel``.

    With ``rng`` and ``lora.config.dropout > 0`` the adapter inputs get dropout
    (one key per kernel and stacked layer); without ``rng`` there is none.
    """
    rate = lora.config.dropout if rng is not None else 0.0
    out = params
    for i, (path, ab) in enumerate(lora.items()):
        base = _kernel_at(params, path)
        keys = None
        if rate > 0.0:
            lead = ab["a"].shape[:-2]
            keys = jax.random.split(jax.random.fold_in(rng, i), lead) if lead else jax.random.fold_in(rng, i)
        kernel = LoraKernel(base, ab["a"], ab["b"], keys, scale=lora.config.scale, dropout=rate)
        out = paths.replace(out, path + ("kernel",), kernel)
    return out


def merge(cfg: DecoderConfig, params: dict[str, Any], lora: LoRA) -> dict[str, Any]:
    """Plain params with ``W + s·A·B`` in each adapted kernel (quantized bases are
    dequantized to their original dtype), for export and inference."""
    out = params
    for path, ab in lora.items():
        base = _kernel_at(params, path)
        _check_shapes(cfg, path, base.shape, ab["a"].shape, ab["b"].shape)
        merged = LoraKernel(base, ab["a"], ab["b"], scale=lora.config.scale).materialize(base.dtype)
        out = paths.replace(out, path + ("kernel",), merged)
    return out


def unmerge(cfg: DecoderConfig, params: dict[str, Any], lora: LoRA) -> dict[str, Any]:
    """Undo ``merge``: ``W - s·A·B`` in each adapted kernel (exact up to rounding in W's dtype)."""
    out = params
    for path, ab in lora.items():
        merged = _kernel_at(params, path)
        if not isinstance(merged, jax.Array):
            raise ValueError(f"'{'/'.join(path)}/kernel' is a {type(merged).__name__}, not a merged array")
        _check_shapes(cfg, path, merged.shape, ab["a"].shape, ab["b"].shape)
        delta = LoraKernel(merged, ab["a"], ab["b"], scale=lora.config.scale).delta()
        restored = (merged.astype(jnp.float32) - delta).astype(merged.dtype)
        out = paths.replace(out, path + ("kernel",), restored)
    return out


@dataclasses.dataclass(frozen=True)
class Finetune:
    """How a decoder trains: a LoRA tree over its frozen base, or (``lora_config`` None) all its weights."""

    lora_config: LoraConfig | None

    @property
    def full(self) -> bool:
        return self.lora_config is None

    def params(self, trainable: dict, frozen: dict, rng: jax.Array | None = None) -> dict:
        """The params a forward pass reads: the base with the adapters applied, or the trained weights."""
        if self.full:
            return trainable["model"]
        return apply(frozen["base"], LoRA(trainable["lora"], self.lora_config), rng=rng)


def finetune_trees(key: jax.Array, cfg: DecoderConfig, params: dict, lora_section) -> tuple[dict, dict, Finetune]:
    """``(trainable, frozen, finetune)`` from a ``config.lora`` section: ``{"lora": adapters}`` over
    ``{"base": params}``, or with ``rank`` 0 ``{"model": params}`` and nothing frozen."""
    rank = int(lora_section.rank)
    if rank == 0:
        return {"model": params}, {}, Finetune(None)
    adapters = init(key, cfg, params, rank=rank, alpha=float(lora_section.alpha), targets=tuple(lora_section.targets),
                    dropout=float(lora_section.dropout), use_rslora=bool(lora_section.get("rslora", False)))
    return {"lora": adapters.params}, {"base": params}, Finetune(adapters.config)
