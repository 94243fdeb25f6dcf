"""Reading JSON and safetensors files (configs, adapter configs, export metadata and weights) with errors that
name the file, and the flat tensor names jaxft's own safetensors files use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(file: Path, *, missing: str = "not found", error: type[Exception] = ValueError) -> Any:
    """Parsed JSON of ``file``; ``FileNotFoundError`` ("<file>: <missing>") or ``error`` for bad JSON."""
    if not file.exists():
        raise FileNotFoundError(f"{file}: {missing}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{file}: malformed JSON ({e})") from None


def read_document(file: Path) -> str:
    """The text of a UTF-8 document file; ``FileNotFoundError`` or ``ValueError`` naming the file (and the line of
    the first byte that is not UTF-8)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{file}:{line}: not valid UTF-8 (byte {err.start})") from None


def read_safetensors(file: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file as numpy arrays; ``FileNotFoundError`` or ``ValueError`` naming the
    file when it is missing or does not read (safetensors' own errors name no file)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not file.exists():
        raise FileNotFoundError(f"{file}: not found")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({' '.join(str(err).split())})") from None


def flatten_tree(tree: dict, prefix: str = "") -> dict:
    """A nested dict of arrays -> ``{"a.b.c": float32 numpy array}``, the flat names a safetensors file holds."""
    import numpy as np

    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_tree(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = np.ascontiguousarray(np.asarray(value, np.float32))
    return out


def unflatten_tree(flat: dict) -> dict:
    """The inverse of :func:`flatten_tree`, as jax arrays."""
    import jax.numpy as jnp

    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return tree
