"""Checks run on a config before anything is built or compiled."""

from __future__ import annotations

import math
from collections.abc import Iterator

from jaxft.errors import ConfigError
from jaxft.train.mesh import MESH_AXES


def _need(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ConfigError(f"config key '{dotted}' is missing")
        node = node[part]
    return node


def _numbers(node, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every float in the config (also inside lists), with its dotted key."""
    if hasattr(node, "items"):
        for key, value in node.items():
            yield from _numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{prefix}[{i}]")
    elif isinstance(node, float):
        yield prefix, node


def validate(config) -> None:
    if not config.recipe:
        raise ConfigError("config key 'recipe' is empty")
    for key, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' is {value}: every number in the config must be finite")
    for key in ("train.steps", "train.batch_size", "optim.schedule.peak_lr", "checkpoint.every", "train.log_every"):
        _need(config, key)
    if int(config.train.steps) <= 0:
        raise ConfigError(f"config key 'train.steps' must be positive, got {config.train.steps}")
    if int(config.train.batch_size) <= 0:
        raise ConfigError(f"config key 'train.batch_size' must be positive, got {config.train.batch_size}")
    accum = int(config.optim.accum_steps)
    if accum <= 0 or int(config.train.batch_size) % accum:
        raise ConfigError(f"config key 'optim.accum_steps'={accum} must divide train.batch_size="
                          f"{config.train.batch_size}")
    for axis in config.mesh.shape:
        if axis not in MESH_AXES:
            raise ConfigError(f"config key 'mesh.shape.{axis}': unknown mesh axis (use {', '.join(MESH_AXES)})")
    max_skipped = config.train.get("max_skipped_updates", 0)
    if not isinstance(max_skipped, int) or max_skipped < 0:
        raise ConfigError(f"config key 'train.max_skipped_updates' must be a whole number >= 0 (0: never stop), "
                          f"got {max_skipped!r}")
    data = config.get("data")
    if hasattr(data, "get") and "on_error" in data and data.on_error not in ("raise", "skip"):
        raise ConfigError(f"config key 'data.on_error'={data.on_error!r}: expected raise or skip")
    if config.train.early_stopping.mode not in ("min", "max"):
        raise ConfigError("config key 'train.early_stopping.mode' must be 'min' or 'max'")
