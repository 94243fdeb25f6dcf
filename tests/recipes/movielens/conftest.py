"""Hand-made MovieLens folders in the three layouts, holding the same ratings."""

from __future__ import annotations

from pathlib import Path

import pytest

TITLES = {1: "Alpha (1990)", 2: "Beta, The (1991)", 3: "Gamma (1992)", 4: "Delta (1993)", 5: "Épsilon (1994)"}
# (user, movie, rating, timestamp), deliberately not in time order within users.
RATINGS = [
    (1, 3, 5.0, 300), (1, 1, 4.0, 100), (1, 5, 4.5, 500), (1, 2, 3.5, 200), (1, 4, 2.0, 400),
    (3, 5, 1.0, 10), (3, 4, 4.0, 20), (3, 3, 3.0, 30), (3, 2, 4.0, 40), (3, 1, 5.0, 50), (3, 2, 2.5, 60),
    (3, 3, 4.0, 70),
    (2, 1, 3.0, 50), (2, 2, 4.0, 60),
]


def _num(x: float) -> str:
    return f"{x:g}"


def write_layout(directory: Path, layout: str, ratings=RATINGS, titles=TITLES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "csv":
        movie_lines = ["movieId,title,genres"] + [
            f'{m},"{t}",Drama' if "," in t else f"{m},{t},Drama" for m, t in titles.items()]
        (directory / "movies.csv").write_text("\n".join(movie_lines) + "\n", encoding="utf-8")
        rating_lines = ["userId,movieId,rating,timestamp"] + [",".join(map(_num, r)) for r in ratings]
        (directory / "ratings.csv").write_text("\n".join(rating_lines) + "\n", encoding="utf-8")
    elif layout == "dat":
        (directory / "movies.dat").write_bytes(
            "".join(f"{m}::{t}::Drama\n" for m, t in titles.items()).encode("latin-1"))
        (directory / "ratings.dat").write_text("".join("::".join(map(_num, r)) + "\n" for r in ratings))
    elif layout == "100k":
        (directory / "u.item").write_bytes("".join(
            f"{m}|{t}|01-Jan-1995||http://example.org/{m}|0|1|0\n" for m, t in titles.items()).encode("latin-1"))
        (directory / "u.data").write_text("".join("\t".join(map(_num, r)) + "\n" for r in ratings))
    else:
        raise ValueError(layout)
    return directory


@pytest.fixture(params=["csv", "dat", "100k"])
def movielens_dir(request, tmp_path) -> Path:
    return write_layout(tmp_path / request.param, request.param)


@pytest.fixture
def prepared_dir(tmp_path) -> Path:
    """The hand-made ratings prepared with history_len=2 (4 train, 2 eval, 2 test records)."""
    from jaxft.recipes.movielens.prepare import PrepareOptions, prepare, write_prepared

    out = tmp_path / "prepared"
    write_prepared(prepare(write_layout(tmp_path / "src", "csv"),
                           PrepareOptions(history_len=2, val_ratio=0.25, test_ratio=0.25)), out)
    return out


@pytest.fixture
def demo_tokenizer_dir(prepared_dir, tmp_path) -> Path:
    from jaxft.recipes.movielens.demo import train_demo_tokenizer

    return train_demo_tokenizer(prepared_dir, 400, tmp_path / "tokenizer")
