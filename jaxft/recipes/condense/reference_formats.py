"""The three ``modules.pt`` layouts of the reference trainer (``condenses/condense-trainer``), read and written.

Each state of the reference saved its learned tensors with ``torch.save`` under ``checkpoints/modules.pt``
(the LoRA beside it as a PEFT adapter):

* ``r1`` (Nov 2024, commit 0778111, ``condense_trainer_core/condense_core.py``): ``{"modules":
  {"pre_condensed_tokens": [1, n, H_enc], "linear_state_dict": {"weight": [H_dec, 2 H_enc], "bias": [H_dec]},
  "norm_state_dict": {"weight": [2 H_enc], "bias": [2 H_enc]}}}`` -- condense tokens and the projector.
* ``modules`` (Dec 2024, commit 9f0fadd, ``condense_trainer_core/callbacks.py``): ``{"modules":
  {"condense_tokens": [1, n, H], "ae_embedding": [1, 1, H], "lm_embedding": [1, 1, H]}}`` -- no projector.
* ``gist`` (Jan 2025, commit 4c5c879, ``compress/modeling/causal_lm.py`` ``push_to_hub``):
  ``{"lm_embedding": [F_lm, H], "auto_encoding_embedding": [F_ae, H], "gist_tokens": [n, H]}`` at the top
  level (``nn.Parameter`` objects).

Files are read with ``torch.load(weights_only=True)`` (plain tensors and containers only, never arbitrary
pickles); torch is an optional dependency, needed only here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

MODULES_FILE = "modules.pt"
FORMATS = {
    "r1": "Nov 2024 (0778111): pre_condensed_tokens + linear/norm projector",
    "modules": "Dec 2024 (9f0fadd): condense_tokens + ae_embedding + lm_embedding",
    "gist": "Jan 2025 (4c5c879): gist_tokens + auto_encoding_embedding + lm_embedding",
}
# The tensors each format holds, by dotted name (nested dicts joined with '.').
FORMAT_KEYS = {
    "r1": ("modules.pre_condensed_tokens", "modules.linear_state_dict.weight", "modules.linear_state_dict.bias",
           "modules.norm_state_dict.weight", "modules.norm_state_dict.bias"),
    "modules": ("modules.condense_tokens", "modules.ae_embedding", "modules.lm_embedding"),
    "gist": ("gist_tokens", "auto_encoding_embedding", "lm_embedding"),
}


def _torch(file: str | Path, what: str):
    try:
        import torch
    except ImportError:
        raise ValueError(f"{file}: {what} a reference {MODULES_FILE} needs torch (pip install torch)") from None
    return torch


@dataclasses.dataclass(frozen=True)
class ReferenceWeights:
    """A reference ``modules.pt``: its format and its tensors (float32 numpy, by dotted name)."""

    format: str
    file: Path
    tensors: dict[str, np.ndarray]

    def expect(self, name: str, shape: tuple[int, ...], needs: str) -> np.ndarray:
        array = self.tensors[name]
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{self.file}: '{name.removeprefix('modules.')}' has shape {tuple(array.shape)}, "
                             f"{needs} needs {tuple(shape)}")
        return array


def find_modules_file(path: str | Path, key: str = "condense.init_from") -> Path:
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / MODULES_FILE, path / MODULES_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config key '{key}'={str(path)!r}: no {MODULES_FILE} there (nor under checkpoints/)")


def _flatten(state: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(state, dict):
        return {prefix: state}
    out = {}
    for key, value in state.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def detect_format(names: set[str]) -> str | None:
    """The format whose first tensor (its marker) is among the dotted ``names``."""
    return next((fmt for fmt, keys in FORMAT_KEYS.items() if keys[0] in names), None)


def read_reference(file: str | Path) -> ReferenceWeights:
    """Read one reference ``modules.pt`` of any of the three formats (see the module docstring)."""
    torch = _torch(file, "reading")
    file = Path(file)
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own message says what is wrong with the file
        raise ValueError(f"{file}: not a readable torch file with plain tensors ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a dict of tensors, got {type(state).__name__}")
    flat = _flatten(state)
    fmt = detect_format(set(flat))
    if fmt is None:
        raise ValueError(f"{file}: not a reference {MODULES_FILE} (keys: {sorted(flat)}); known formats: "
                         + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    tensors = {}
    for key in FORMAT_KEYS[fmt]:
        value = flat.get(key)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{file}: the {fmt} format ({FORMATS[fmt]}) needs a tensor '{key}' (keys: {sorted(flat)})")
        tensors[key] = value.detach().float().cpu().numpy()
    return ReferenceWeights(fmt, file, tensors)


def _save(file: str | Path, state: dict) -> Path:
    torch = _torch(file, "writing")
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)

    def to_torch(value):
        if isinstance(value, dict):
            return {key: to_torch(v) for key, v in value.items()}
        return torch.from_numpy(np.array(value, dtype=np.float32))  # a writable float32 copy

    torch.save(to_torch(state), str(file))
    return file


def write_r1(file: str | Path, condense_tokens, projector: dict) -> Path:
    """R1's ``modules.pt`` from a jaxft reference-projector condenser: ``condense_tokens`` [n, H_enc] and the
    flax projector ``{linear: {kernel [2 H_enc, H_dec], bias}, norm: {scale, bias}}``."""
    linear, norm = projector["linear"], projector["norm"]
    return _save(file, {"modules": {
        "pre_condensed_tokens": np.asarray(condense_tokens, np.float32)[None],
        "linear_state_dict": {"weight": np.asarray(linear["kernel"], np.float32).T,  # flax [in, out] -> torch
                              "bias": linear["bias"]},
        "norm_state_dict": {"weight": norm["scale"], "bias": norm["bias"]}}})


def write_gist(file: str | Path, gist_tokens, ae_flags, lm_flags) -> Path:
    """The Jan 2025 gist ``modules.pt``: ``gist_tokens`` [n, H], ``auto_encoding_embedding`` [F, H] and
    ``lm_embedding`` [F, H], at the top level as the reference's ``push_to_hub`` saves them."""
    return _save(file, {"lm_embedding": lm_flags, "auto_encoding_embedding": ae_flags, "gist_tokens": gist_tokens})
