"""Import the reference trainer's released weights (``condenses/condense-trainer``).

Its best checkpoint is ``modules.pt`` (``torch.save`` of ``{"modules": {"pre_condensed_tokens":
[1, n, H_enc], "linear_state_dict": {"weight": [H_dec, 2 H_enc], "bias"}, "norm_state_dict":
{"weight": [2 H_enc], "bias"}}}``, in the hub repo under ``checkpoints/``) and the encoder's PEFT
LoRA (``adapter_config.json`` + ``adapter_model.safetensors`` at the repo's root). Reading the
``.pt`` file needs torch (an optional dependency) and uses ``torch.load(weights_only=True)``: the
file is never unpickled beyond plain tensors and dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

MODULES_FILE = "modules.pt"


def find_modules_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / MODULES_FILE, path / MODULES_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config key 'condense.init_from'={str(path)!r}: no {MODULES_FILE} there "
                            f"(nor under checkpoints/)")


def read_modules(file: str | Path) -> dict[str, np.ndarray]:
    """The reference's learned tensors as float32 numpy arrays, by their torch names."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{file}: reading a reference {MODULES_FILE} needs torch (pip install torch)") from None
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own message says what is wrong with the file
        raise ValueError(f"{file}: not a readable torch file with plain tensors ({type(e).__name__}: {e})") from None
    modules = state.get("modules") if isinstance(state, dict) else None
    if not isinstance(modules, dict):
        raise ValueError(f"{file}: expected a dict with key 'modules' (the reference trainer's format)")
    out = {}
    for name, sub in (("pre_condensed_tokens", None), ("linear_state_dict", ("weight", "bias")),
                      ("norm_state_dict", ("weight", "bias"))):
        if name not in modules:
            raise ValueError(f"{file}: 'modules' has no '{name}' (keys: {sorted(modules)})")
        for key in (sub or (None,)):
            tensor = modules[name] if key is None else modules[name].get(key)
            if tensor is None:
                raise ValueError(f"{file}: 'modules.{name}' has no '{key}'")
            out[name if key is None else f"{name}.{key}"] = tensor.detach().float().cpu().numpy()
    return out


def _expect(file: Path, name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(array.shape) != shape:
        raise ValueError(f"{file}: '{name}' has shape {tuple(array.shape)}, this encoder/decoder pair with "
                         f"condense.projector=reference needs {shape}")


def _lora_shape(config) -> tuple:
    """What must agree between an imported adapter and config.lora (target order and dropout need not)."""
    return config.rank, float(config.alpha), frozenset(config.targets), bool(config.use_rslora)


def import_reference(path: str | Path, model, trainable: dict[str, Any]) -> dict[str, Any]:
    """``trainable`` with condense tokens, projector (and the LoRA, when an adapter sits next to the
    weights) replaced by the reference's. Markers keep their values (the reference of that format has none)."""
    from jaxft import lora as lora_lib

    if model.projector != "reference":
        raise ValueError("config key 'condense.init_from': the reference's weights need condense.projector=reference")
    file = find_modules_file(path)
    w = read_modules(file)
    n, h_enc, h_dec = model.num_condense_tokens, model.encoder.hidden_size, model.decoder.hidden_size
    _expect(file, "pre_condensed_tokens", w["pre_condensed_tokens"], (1, n, h_enc))
    _expect(file, "linear_state_dict.weight", w["linear_state_dict.weight"], (h_dec, 2 * h_enc))
    _expect(file, "linear_state_dict.bias", w["linear_state_dict.bias"], (h_dec,))
    _expect(file, "norm_state_dict.weight", w["norm_state_dict.weight"], (2 * h_enc,))
    _expect(file, "norm_state_dict.bias", w["norm_state_dict.bias"], (2 * h_enc,))
    out = dict(trainable)
    out["condense_tokens"] = jnp.asarray(w["pre_condensed_tokens"][0])
    out["projector"] = {
        "linear": {"kernel": jnp.asarray(w["linear_state_dict.weight"].T),  # torch [out, in] -> flax [in, out]
                   "bias": jnp.asarray(w["linear_state_dict.bias"])},
        "norm": {"scale": jnp.asarray(w["norm_state_dict.weight"]), "bias": jnp.asarray(w["norm_state_dict.bias"])},
    }
    root = Path(path).expanduser()
    root = root if root.is_dir() else file.parent
    for adapter_dir in (root, file.parent, file.parent.parent):
        if (adapter_dir / "adapter_config.json").is_file():
            adapters = lora_lib.load_peft(adapter_dir, model.encoder)
            if model.lora_config is not None and _lora_shape(adapters.config) != _lora_shape(model.lora_config):
                raise ValueError(f"{adapter_dir / 'adapter_config.json'}: the adapter is {adapters.config}; set "
                                 f"config.lora to match it (now {model.lora_config})")
            out["lora"] = adapters.params
            break
    return out
