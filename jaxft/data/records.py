"""Read training records (dicts of text columns) from JSON, JSONL, CSV and plain-text files.

Every bad record is reported as ``<file>:<line>: column '<name>' ...`` (JSONL, CSV, text) or
``<file>[<index>]: ...`` (JSON arrays), so a user can jump straight to it. With
``on_error="skip"`` bad records are dropped instead and counted in ``records.summary``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Format = Literal["json", "jsonl", "csv", "txt"]
SUFFIX_FORMATS: dict[str, Format] = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "txt",
}
_GLOB_CHARS = frozenset("*?[")
_MAX_REASONS = 5


class DataError(ValueError):
    """A data file, path or record that cannot be used; the message names where the problem is."""


@dataclass
class ReadSummary:
    """What a read produced, for the trainer's log: counts plus the first few skip reasons."""

    files: int = 0
    records: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def note_skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)

    def __str__(self) -> str:
        text = f"read {self.records:,} records from {self.files:,} file(s)"
        if self.skipped:
            text += f"; skipped {self.skipped:,} bad record(s), e.g. " + "; ".join(self.reasons)
        return text


class RecordList(list):
    """A plain ``list`` of record dicts that also carries the :class:`ReadSummary` of how it was read
    and, in ``origins``, where each record came from (``file:line``), so later stages can name it."""

    def __init__(self, records=(), summary: ReadSummary | None = None, origins: Sequence[str] | None = None):
        super().__init__(records)
        self.summary = summary if summary is not None else ReadSummary(records=len(self))
        self.origins = list(origins) if origins is not None else []
        if self.origins and len(self.origins) != len(self):
            raise ValueError(f"{len(self.origins)} origins for {len(self)} records")

    def add(self, record: dict[str, str], origin: str) -> None:
        self.append(record)
        self.origins.append(origin)


def read_records(path: str | os.PathLike | Sequence[str | os.PathLike], *, fmt: Format | None = None,
                 columns: Sequence[str] = ("text",), on_error: Literal["raise", "skip"] = "raise",
                 paragraphs: bool = False) -> RecordList:
    """Records ``{column: str}`` from a file, a directory (its data files, recursively), a glob, or a list of these.

    ``fmt`` overrides the format otherwise taken from each file's suffix (.json, .jsonl, .csv, .txt).
    A text file is one record, or one record per blank-line-separated paragraph with ``paragraphs=True``.
    Only ``columns`` are kept; each must hold a non-empty string.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if fmt is not None and fmt not in SUFFIX_FORMATS.values():
        raise ValueError(f"unknown format {fmt!r}; expected one of json, jsonl, csv, txt")
    columns = (columns,) if isinstance(columns, str) else tuple(columns)
    if not columns:
        raise ValueError("columns must name at least one column")
    files = resolve_files(path)

    def raw_rows():
        for file in files:
            file_fmt = fmt or _format_of(file)
            if file_fmt == "txt" and len(columns) != 1:
                raise DataError(f"{file}: a text file holds a single column, but columns={list(columns)}")
            yield from _raw_records(file, file_fmt, columns, paragraphs)

    return collect_records(raw_rows(), columns, on_error, len(files), _describe(path))


def collect_records(rows, columns: Sequence[str], on_error: str, files: int, origin: str) -> RecordList:
    """Validate ``(where, raw)`` rows into a ``RecordList``, raising on or counting bad ones."""
    summary = ReadSummary(files=files)
    records = RecordList(summary=summary)
    for where, raw in rows:
        try:
            records.add(validate_record(raw, columns, where), where)
        except DataError as err:
            if on_error == "raise":
                raise
            summary.note_skip(str(err))
    summary.records = len(records)
    if not records:
        raise DataError(f"no usable records in {origin}" + (f" ({summary})" if summary.skipped else ""))
    return records


def validate_record(raw: Any, columns: Sequence[str], where: str) -> dict[str, str]:
    """``{column: text}`` for ``columns`` of ``raw``, or a ``DataError`` that starts with ``where``."""
    if isinstance(raw, _Malformed):
        raise DataError(f"{where}: {raw.reason}")
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object with column(s) {list(columns)}, got {type(raw).__name__}")
    record = {}
    for column in columns:
        if column not in raw or raw[column] is None:
            raise DataError(f"{where}: column {column!r} is missing")
        value = raw[column]
        if not isinstance(value, str):
            raise DataError(f"{where}: column {column!r} is {type(value).__name__}, expected a string")
        if not value.strip():
            raise DataError(f"{where}: column {column!r} is empty")
        record[column] = value
    return record


def split_records(records: Sequence, validation_fraction: float, seed: int) -> tuple[list, list]:
    """``(train, validation)``: a seeded random split; each part keeps the original order (and, for a
    :class:`RecordList`, the records' origins)."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    n = len(records)
    n_val = 0 if validation_fraction == 0 else max(1, round(n * validation_fraction))
    if n_val >= n:
        raise ValueError(f"validation_fraction={validation_fraction} of {n} records leaves nothing to train on")
    is_val = np.zeros(n, bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    parts = (np.flatnonzero(~is_val), np.flatnonzero(is_val))
    if isinstance(records, RecordList) and records.origins:
        return tuple(RecordList([records[i] for i in p], origins=[records.origins[i] for i in p]) for p in parts)
    return tuple([records[i] for i in p] for p in parts)


def resolve_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The data files named by a path, a directory, a glob or a list of these, in sorted order."""
    if isinstance(path, (list, tuple)):
        return [f for p in path for f in resolve_files(p)]
    text = os.fspath(path)
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        if not matches:
            raise DataError(f"no files match {text}")
        return matches
    p = Path(text).expanduser()
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIX_FORMATS
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not found:
            raise DataError(f"{p}: directory holds no data files ({', '.join(SUFFIX_FORMATS)})")
        return found
    if not p.exists():
        raise DataError(f"no such file or directory: {p}")
    return [p]


def _format_of(file: Path) -> Format:
    try:
        return SUFFIX_FORMATS[file.suffix.lower()]
    except KeyError:
        raise DataError(f"{file}: cannot tell the format from the suffix {file.suffix!r}; "
                        "pass fmt='json', 'jsonl', 'csv' or 'txt'") from None


def _describe(path) -> str:
    return ", ".join(map(os.fspath, path)) if isinstance(path, (list, tuple)) else os.fspath(path)


@dataclass(frozen=True)
class _Malformed:
    """Stands in for a record that could not even be parsed, so skip/raise is decided in one place."""

    reason: str


def _raw_records(file: Path, fmt: Format, columns: tuple[str, ...], paragraphs: bool) -> Iterator[tuple[str, Any]]:
    text = _read_text(file)
    if fmt in ("json", "txt"):  # one record per file or a whole-file parse: a bad byte spoils it all
        _require_utf8(file, text)
    if fmt == "jsonl":
        yield from _jsonl(file, text)
    elif fmt == "json":
        yield from _json(file, text)
    elif fmt == "csv":
        yield from _csv(file, text, columns)
    else:
        yield from _txt(file, text, columns[0], paragraphs)


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape decodes invalid bytes to


def _read_text(file: Path) -> str:
    """The file's text; invalid UTF-8 bytes are kept as surrogates so a line-based reader can name (or skip)
    just the rows that hold them."""
    return file.read_bytes().decode("utf-8-sig", errors="surrogateescape")


def _require_utf8(file: Path, text: str) -> None:
    bad = _NOT_UTF8.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise DataError(f"{file}:{line}: not valid UTF-8")


def _lines(text: str) -> list[str]:
    """Lines ended by LF, CRLF or CR only: str.splitlines also splits on characters such as U+2028,
    which JSON allows inside strings, and would shift every line number after them."""
    return [line.rstrip("\r\n") for line in io.StringIO(text, newline="")]


def _jsonl(file: Path, text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        if _NOT_UTF8.search(line):
            yield f"{file}:{number}", _Malformed("not valid UTF-8")
            continue
        try:
            yield f"{file}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            yield f"{file}:{number}", _Malformed(f"invalid JSON at column {err.colno}: {err.msg}")


def _json(file: Path, text: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{file}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON list of objects or {{\"data\": [...]}}, got {type(data).__name__}")
    for index, item in enumerate(data):
        yield f"{file}[{index}]", item


def _csv(file: Path, text: str, columns: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long documents are normal here; the stdlib default is 128 KiB
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{file}: the CSV file is empty")
        missing = [c for c in columns if c not in header]
        if missing:
            # A header problem, not a bad row: skipping every row would hide it.
            raise DataError(f"{file}:1: no column {missing[0]!r} in the header (columns: {', '.join(header)})")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"{file}:{start}: malformed CSV: {err}") from None
            where, start = f"{file}:{start}", reader.line_num + 1
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                yield where, _Malformed(f"{len(row)} fields, but the header has {len(header)}")
                continue
            if any(_NOT_UTF8.search(cell) for cell in row):
                yield where, _Malformed("not valid UTF-8")
                continue
            yield where, dict(zip(header, row))  # a short row lacks its last columns: reported as missing
    finally:
        csv.field_size_limit(old_limit)


def _txt(file: Path, text: str, column: str, paragraphs: bool) -> Iterator[tuple[str, Any]]:
    if not paragraphs:
        yield f"{file}:1", {column: text}
        return
    block: list[str] = []
    first_line = 0
    for number, line in enumerate([*_lines(text), ""], start=1):
        if line.strip():
            first_line = first_line or number
            block.append(line)
        elif block:
            yield f"{file}:{first_line}", {column: "\n".join(block)}
            block, first_line = [], 0
