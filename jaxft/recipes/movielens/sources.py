"""Read MovieLens ratings and titles from the three layouts the archives ship in.

* ``ratings.csv`` + ``movies.csv`` with headers (ml-latest-small, ml-25m, ml-32m);
* ``ratings.dat`` + ``movies.dat``, ``::``-separated, no header (ml-1m, ml-10m);
* ``u.data`` (tab-separated) + ``u.item`` (``|``-separated, latin-1) (ml-100k).

A bad row is a ``DataError`` naming ``file:line``; with ``on_error="skip"`` it is dropped and
counted in :class:`ReadReport`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
from collections.abc import Iterator
from pathlib import Path

from jaxft.data.records import DataError

LAYOUTS = {  # layout name -> (ratings file, movies file)
    "csv": ("ratings.csv", "movies.csv"),
    "dat": ("ratings.dat", "movies.dat"),
    "100k": ("u.data", "u.item"),
}


@dataclasses.dataclass(frozen=True)
class Rating:
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


@dataclasses.dataclass
class ReadReport:
    layout: str
    files: dict[str, str]  # file name -> sha256
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # file name -> bad rows dropped
    first_errors: list[str] = dataclasses.field(default_factory=list)

    def skip(self, file: Path, message: str) -> None:
        self.skipped[file.name] = self.skipped.get(file.name, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(message)


class _RowError(Exception):
    pass


def detect_layout(source: Path) -> str:
    if not source.is_dir():
        raise DataError(f"--source {source}: not a directory")
    for name, (ratings, movies) in LAYOUTS.items():
        if (source / ratings).is_file() or (source / movies).is_file():
            for needed in (ratings, movies):
                if not (source / needed).is_file():
                    raise DataError(f"{source / needed}: missing (the {ratings} layout needs {ratings} and {movies})")
            return name
    expected = "; ".join(f"{r} + {m}" for r, m in LAYOUTS.values())
    raise DataError(f"{source}: no MovieLens files found (expected one of: {expected})")


def read_movielens(source: Path, on_error: str = "raise") -> tuple[list[Rating], dict[int, str], ReadReport]:
    """(ratings in file order, movie id -> title, report). Ratings of unknown movies are bad rows."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    source = Path(source)
    layout = detect_layout(source)
    ratings_file, movies_file = (source / name for name in LAYOUTS[layout])
    report = ReadReport(layout, {f.name: _sha256(f) for f in (ratings_file, movies_file)})
    titles: dict[int, str] = {}
    for _where, fields in _rows(movies_file, layout, "movies", report, on_error):
        movie_id, title = _movie(fields)
        titles[movie_id] = title
    ratings = []
    for where, fields in _rows(ratings_file, layout, "ratings", report, on_error):
        try:
            rating = _rating(fields)
            if rating.movie_id not in titles:
                raise _RowError(f"movie id {rating.movie_id} is not in {movies_file.name}")
        except _RowError as err:
            _fail(report, ratings_file, f"{where}: {err}", on_error)
            continue
        ratings.append(rating)
    if not ratings:
        raise DataError(f"{ratings_file}: no usable ratings")
    return ratings, titles, report


def _fail(report: ReadReport, file: Path, message: str, on_error: str) -> None:
    if on_error == "raise":
        raise DataError(message)
    report.skip(file, message)


def _rows(file: Path, layout: str, kind: str, report: ReadReport, on_error: str) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, fields) of each data row; movie rows already checked by ``_movie``."""
    text = _decode(file, latin1=layout == "100k")
    if layout == "csv":
        lines = _csv_rows(file, text, kind)
    else:
        sep = "::" if layout == "dat" else ("\t" if kind == "ratings" else "|")
        lines = _separated_rows(text, sep)
    for number, fields in lines:
        where = f"{file}:{number}"
        if kind == "movies":
            try:
                _movie(fields)
            except _RowError as err:
                _fail(report, file, f"{where}: {err}", on_error)
                continue
        yield where, fields


def _separated_rows(text: str, sep: str) -> Iterator[tuple[int, list[str]]]:
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        line = line.rstrip("\n")
        if line.strip():
            yield number, line.split(sep)


def _csv_rows(file: Path, text: str, kind: str) -> Iterator[tuple[int, list[str]]]:
    wanted = ("userId", "movieId", "rating", "timestamp") if kind == "ratings" else ("movieId", "title")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{file}: empty file")
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{file}:1: no column {missing[0]!r} in the header (columns: {', '.join(header)})")
    columns = [header.index(c) for c in wanted]
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{file}:{start}: malformed CSV: {err}") from None
        number, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        # Reorder to the .dat field order (ids first), marking absent cells as missing.
        yield number, [row[i] if i < len(row) else None for i in columns]


def _movie(fields: list) -> tuple[int, str]:
    if len(fields) < 2 or fields[1] is None:
        raise _RowError(f"expected a movie id and a title, got {len(fields)} field(s)")
    movie_id = _integer(fields[0], "movie id")
    title = fields[1].strip()
    if not title:
        raise _RowError("empty title")
    return movie_id, title


def _rating(fields: list) -> Rating:
    if len(fields) < 4 or any(f is None for f in fields[:4]):
        present = sum(f is not None for f in fields[:4])
        raise _RowError(f"expected user id, movie id, rating and timestamp, got {present} field(s)")
    user_id = _integer(fields[0], "user id")
    movie_id = _integer(fields[1], "movie id")
    try:
        rating = float(fields[2])
    except ValueError:
        raise _RowError(f"rating {fields[2]!r} is not a number") from None
    if not math.isfinite(rating):
        raise _RowError(f"rating {fields[2]!r} is not a finite number")
    return Rating(user_id, movie_id, rating, _integer(fields[3], "timestamp"))


def _integer(text: str | None, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise _RowError(f"{what} {text!r} is not an integer") from None


def _decode(file: Path, latin1: bool) -> str:
    data = file.read_bytes()
    if latin1:
        return data.decode("latin-1")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # ml-1m and ml-10m .dat titles are latin-1


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
