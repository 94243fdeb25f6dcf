"""Load the recipe configs under configs/ the way ``jaxft.main`` does."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe_config(name: str, preset: str | None = None):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset) if preset else module.get_config()
    config.unlock() if hasattr(config, "unlock") else None
    return config
