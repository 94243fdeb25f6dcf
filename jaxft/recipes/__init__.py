"""Recipes: one module per job, each turning a config into a ``TrainTask``."""

from __future__ import annotations

import importlib

from jaxft.recipes.base import TrainTask

RECIPES = {
    "lm": "jaxft.recipes.lm",
    "condense": "jaxft.recipes.condense.recipe",
    "minigpt": "jaxft.recipes.minigpt",
}


def build_task(config, mesh) -> TrainTask:
    name = config.recipe
    if name not in RECIPES:
        raise ValueError(f"config key 'recipe': unknown recipe '{name}' (known: {', '.join(sorted(RECIPES))})")
    return importlib.import_module(RECIPES[name]).build(config, mesh)


__all__ = ["RECIPES", "TrainTask", "build_task"]
