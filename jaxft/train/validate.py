"""Checks run on a config before anything is built or compiled (they live with the typed parsing)."""

from __future__ import annotations

from jaxft.errors import ConfigError
from jaxft.settings import validate

__all__ = ["ConfigError", "validate"]
