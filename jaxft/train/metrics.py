"""Metric bookkeeping and TensorBoard event files (process 0 only)."""

from __future__ import annotations

from pathlib import Path


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Turn ``{"x": sum, "x_count": n}`` pairs into ratios; keep other values."""
    out = {}
    for key, value in sums.items():
        if key.endswith("_count"):
            continue
        count = sums.get(f"{key}_count")
        out[key] = value / count if count else value
    return out


class MetricWriter:
    def __init__(self, directory: Path, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            directory.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(directory))

    def scalars(self, step: int, values: dict[str, float], prefix: str = ""):
        if self._writer is None:
            return
        for k, v in values.items():
            self._writer.add_scalar(prefix + k, v, step)

    def text(self, step: int, tag: str, text: str):
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()
