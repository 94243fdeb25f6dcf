"""movielens: "will this user like this movie?" -- Yes/No SFT on MovieLens histories.

``python -m jaxft.recipes.movielens prepare`` builds the records, ``python -m jaxft.main --config
configs/movielens.py`` trains, ``python -m jaxft.recipes.movielens compare`` scores base vs tuned.
"""


def build(config, placement):
    """The ``TrainTask`` (see :mod:`jaxft.recipes.movielens.recipe`); imported lazily so the data
    commands start without loading JAX."""
    from jaxft.recipes.movielens.recipe import build as build_task

    return build_task(config, placement)


def load_export(directory: str, base_model: str | None = None):
    from jaxft.recipes.movielens.recipe import load_export as load

    return load(directory, base_model)


__all__ = ["build", "load_export"]
