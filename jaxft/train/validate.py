"""Checks run on a config before anything is built or compiled."""

from __future__ import annotations

from jaxft.train.mesh import MESH_AXES


class ConfigError(ValueError):
    pass


def _need(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ConfigError(f"config key '{dotted}' is missing")
        node = node[part]
    return node


def validate(config) -> None:
    if not config.recipe:
        raise ConfigError("config key 'recipe' is empty")
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
    if config.train.early_stopping.mode not in ("min", "max"):
        raise ConfigError("config key 'train.early_stopping.mode' must be 'min' or 'max'")
