"""Checks run on a config before anything is built or compiled."""

from __future__ import annotations

from typing import Any

from jaxft import settings as settings_lib
from jaxft.errors import ConfigError
from jaxft.settings import Settings
from jaxft.train.mesh import MESH_AXES

__all__ = ["ConfigError", "validate"]


def validate(config: Any) -> Settings:
    """``jaxft.settings.validate`` (types, ranges, finite numbers) and the mesh's axis names; the engine
    sections, parsed."""
    settings = settings_lib.validate(config)
    for axis in settings.mesh.shape:
        if axis not in MESH_AXES:
            raise ConfigError(f"config key 'mesh.shape.{axis}': unknown mesh axis (use {', '.join(MESH_AXES)})")
    return settings
