"""Where checkpoint tensors come from: a uniform, lazy, name -> numpy interface.

A source hands out one tensor at a time so loaders never hold a second copy of
the model on the host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or inconsistent with its config."""


class TensorSource(Protocol):
    origin: str

    def names(self) -> Iterable[str]: ...

    def get(self, name: str) -> np.ndarray: ...

    def close(self) -> None: ...


class SafetensorsSource:
    """A directory with ``model.safetensors`` or sharded files plus an index."""

    def __init__(self, directory: Path):
        self.origin = str(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: malformed index ({e!r})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(f"{directory}: no *.safetensors files found")
        self._handles = {}
        for fname in files:
            fpath = directory / fname
            if not fpath.exists():
                raise CheckpointError(f"{fpath}: listed in the index but missing")
            self._handles[fname] = safe_open(str(fpath), framework="np")
        if weight_map is None:
            weight_map = {k: fname for fname, h in self._handles.items() for k in h.keys()}
        self._where = weight_map

    def names(self) -> Iterable[str]:
        return self._where.keys()

    def get(self, name: str) -> np.ndarray:
        return self._handles[self._where[name]].get_tensor(name)

    def close(self) -> None:
        self._handles.clear()
