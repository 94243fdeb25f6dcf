"""Recipes: one package per job, each with ``build(config, placement) -> TrainTask``.

``config.recipe`` is a short name from ``RECIPES`` or a dotted module path of the
user's own recipe (any importable module with a ``build(config, placement)``; ``placement``
(``jaxft.train.placement.Placement``) carries the mesh as ``placement.mesh``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

RECIPES = {
    "lm": "jaxft.recipes.lm",
    "condense": "jaxft.recipes.condense",
    "embedllm": "jaxft.recipes.embedllm",
    "minigpt": "jaxft.recipes.minigpt",
    "movielens": "jaxft.recipes.movielens",
    "summarize": "jaxft.recipes.summarize",
}


def resolve(name: str) -> ModuleType:
    """The recipe module for a registered name or a dotted module path."""
    if not name:
        raise ValueError("config key 'recipe' is empty")
    module_name = RECIPES.get(name, name if "." in name else None)
    if module_name is None:
        raise ValueError(f"config key 'recipe': unknown recipe '{name}' (known: {', '.join(sorted(RECIPES))}; "
                         "or a dotted module path with build(config, placement))")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"config key 'recipe': cannot import module '{module_name}'") from None
        raise
    if not callable(getattr(module, "build", None)):
        raise ValueError(f"config key 'recipe': module '{module_name}' has no build(config, placement)")
    return module


__all__ = ["RECIPES", "resolve"]
