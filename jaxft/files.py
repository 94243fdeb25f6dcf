"""Reading small JSON files (configs, adapter configs, export metadata) with errors that name the file."""

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
