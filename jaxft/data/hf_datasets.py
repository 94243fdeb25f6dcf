"""Records from Hugging Face ``datasets``: a hub name, a ``save_to_disk`` directory, or a directory of data files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jaxft.data.records import DataError, RecordList, collect_records

if TYPE_CHECKING:
    import datasets


def load_hf_dataset(name_or_local_dir: str | os.PathLike, split: str = "train", columns: Sequence[str] = ("text",),
                    config_name: str | None = None, *, on_error: Literal["raise", "skip"] = "raise",
                    cache_dir: str | os.PathLike | None = None, streaming: bool = False,
                    max_records: int | None = None) -> RecordList:
    """One split as a list of ``{column: str}`` records, checked like :func:`jaxft.data.read_records`.

    A local directory written by ``save_to_disk`` is opened with ``datasets.load_from_disk``; any
    other local directory is read as data files (split names come from the file names, a lone file
    is ``train``); anything else is a hub name (needs network access). Bad rows are named
    ``<source>:<split>[<row>]``. ``streaming`` reads a hub dataset row by row instead of downloading
    it whole; rows are only materialised up to ``max_records`` either way.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    columns = (columns,) if isinstance(columns, str) else tuple(columns)
    source = os.fspath(name_or_local_dir)
    dataset = _open_split(source, split, config_name, None if cache_dir is None else os.fspath(cache_dir), streaming)
    available = list(dataset.column_names or [])
    missing = [c for c in columns if available and c not in available]
    if missing:
        raise DataError(f"{source}:{split}: no column {missing[0]!r} (available: {', '.join(available)})")
    rows = dataset.select_columns(list(columns)) if available else dataset
    if max_records:
        rows = rows.take(max_records) if streaming else rows.select(range(min(max_records, len(rows))))
    indexed = ((f"{source}:{split}[{index}]", row) for index, row in enumerate(rows))  # row by row, never whole
    return collect_records(indexed, columns, on_error, 1, f"{source}:{split}")


def _open_split(source: str, split: str, config_name: str | None, cache_dir: str | None,
                streaming: bool = False) -> datasets.Dataset:
    import datasets  # heavy (pandas, pyarrow): only paid by callers of this module

    local = Path(source).expanduser()
    saved_markers = (datasets.config.DATASET_STATE_JSON_FILENAME, datasets.config.DATASETDICT_JSON_FILENAME)
    if local.is_dir() and any((local / marker).exists() for marker in saved_markers):
        return _pick_split(datasets.load_from_disk(str(local)), split, source)
    if not local.exists() and (local.is_absolute() or source.startswith((".", "~"))):
        raise DataError(f"no such directory: {local}")  # clearly a path, so not worth asking the hub
    if local.is_file():
        raise DataError(f"{source} is a file; use jaxft.data.read_records for data files, "
                        "or pass the directory that holds it")
    where = "the local directory" if local.is_dir() else "the Hugging Face hub"
    try:
        loaded = datasets.load_dataset(str(local) if local.is_dir() else source, config_name, cache_dir=cache_dir,
                                       streaming=streaming)
    except Exception as err:  # noqa: BLE001 - network, missing dataset, bad files: all reported the same way
        hint = "" if local.is_dir() else " (it is not a local directory either)"
        raise DataError(f"could not load {source!r} from {where}{hint}: {err}") from err
    return _pick_split(loaded, split, source)


def _pick_split(loaded, split: str, source: str) -> datasets.Dataset:
    import datasets

    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in loaded:
            raise DataError(f"{source}: no split {split!r} (available: {', '.join(loaded)})")
        return loaded[split]
    saved_split = str(loaded.split) if getattr(loaded, "split", None) is not None else None
    if saved_split is not None and saved_split != split:
        raise DataError(f"{source}: holds the {saved_split!r} split, not {split!r}")
    return loaded
