"""What a resumed run must match: the model and LoRA layout of the checkpoint, and the data it was trained on."""

from __future__ import annotations

from pathlib import Path


class WorkdirMismatch(ValueError):
    """The workdir's checkpoints were written by a run this config cannot continue."""


def check_same_data(workdir: Path, metadata: dict | None, data_state: dict | None,
                    current: dict[str, str] | None) -> None:
    """Refuse a resume whose ``TrainTask.data_fingerprint`` differs from the one saved with the checkpoint."""
    saved = (metadata or {}).get("data")
    if saved is None or current is None or saved == current:
        return
    changed = ", ".join(f"data.{k}: {saved.get(k, '')!r} -> {current.get(k, '')!r}"
                        for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))
    position = (data_state or {}).get("global_batches")
    where = f" (data position: {position} batches)" if position is not None else ""
    raise WorkdirMismatch(f"workdir {workdir} was trained on other data ({changed}); its saved data "
                          f"position{where} would not mean the same on this data: use a new --workdir, "
                          "or the data that run used")


def layout_message(err, directory) -> str:
    """One line from a ``CheckpointLayoutError``: the first difference (params first) and what to do."""
    def params_first(path: str):
        return (not path.startswith("params"), path)

    def more(items: list) -> str:
        return f" (and {len(items) - 1} more)" if len(items) > 1 else ""

    if err.shapes:
        shapes = sorted(err.shapes, key=lambda item: params_first(item[0]))
        path, saved, requested = shapes[0]
        what = f"'{path}' has shape {saved} in the checkpoint and {requested} in this config{more(shapes)}"
    else:
        parts = []
        if err.extra:
            extra = sorted(err.extra, key=params_first)
            parts.append(f"the checkpoint has '{extra[0]}'{more(extra)} that this config does not")
        if err.missing:
            missing = sorted(err.missing, key=params_first)
            parts.append(f"this config needs '{missing[0]}'{more(missing)} that the checkpoint lacks")
        what = "; ".join(parts)
    return (f"the checkpoint in {directory} (step {err.step}) was written with another model or LoRA setup: "
            f"{what}; use a new --workdir or the same config")
