"""movielens: "will this user like this movie?" -- Yes/No SFT on MovieLens histories.

``python -m jaxft.recipes.movielens prepare`` builds the records, ``python -m jaxft.main --config
configs/movielens.py`` trains, ``python -m jaxft.recipes.movielens compare`` scores base vs tuned.
"""
