"""Metric bookkeeping: TensorBoard event files and a JSONL log of every logged row (process 0 only)."""

from __future__ import annotations

import json
import math
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
    """TensorBoard event files, and optionally Weights & Biases (``logging.wandb``)."""

    def __init__(self, directory: Path, enabled: bool = True, wandb_project: str | None = None,
                 run_config: dict | None = None, jsonl: Path | None = None):
        self._writer = None
        self._wandb = None
        self._jsonl = None
        if not enabled:
            return
        if jsonl is not None:  # appended to, so a resumed run continues its log
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(jsonl, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        directory.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(directory))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ValueError("config key 'logging.wandb' is on but wandb is not installed "
                                 "(pip install wandb)") from None
            self._wandb = wandb.init(project=wandb_project, config=run_config, dir=str(directory))

    def _log_row(self, row: dict):
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()

    def scalars(self, step: int, values: dict[str, float], prefix: str = ""):
        if self._writer is None:
            return
        self._log_row({"step": step, "split": prefix.rstrip("/") or "train",
                       **{k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}})
        for k, v in values.items():
            self._writer.add_scalar(prefix + k, v, step)
        if self._wandb is not None:
            self._wandb.log({prefix + k: v for k, v in values.items()}, step=step)

    def text(self, step: int, tag: str, text: str):
        if self._writer is not None:
            self._writer.add_text(tag, text, step)
            self._log_row({"step": step, "split": "samples", "name": tag.removeprefix("samples/"), "text": text})

    def close(self):
        """Write everything out (tensorboardX flushes asynchronously; only close waits)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
