"""Load the recipe configs under configs/ the way ``jaxft.main`` does."""

from pathlib import Path

from jaxft.config import load_config_file

ROOT = Path(__file__).resolve().parents[1]


def recipe_config(name: str, preset: str | None = None):
    config = load_config_file(f"{ROOT / 'configs' / name}.py" + (f":{preset}" if preset else ""))
    config.unlock() if hasattr(config, "unlock") else None
    return config
