"""Read and write PEFT LoRA adapter directories.

A PEFT adapter is ``adapter_config.json`` plus ``adapter_model.safetensors``
holding, per adapted Linear, ``base_model.model.<module>.lora_A.weight`` [r, in]
and ``...lora_B.weight`` [out, r] (PyTorch layout). Module names come from the
same table as the base checkpoint (``param_specs``), so every model family that
loads also exports adapters. Options that change the maths but that jaxft does
not implement (DoRA, per-module ranks, extra trained modules, ...) are rejected
by name rather than silently dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from jaxft.files import read_json, read_safetensors
from jaxft.checkpoint.hf_names import ParamSpec, param_specs
from jaxft.checkpoint.sources import CheckpointError
from jaxft.lora.adapters import LoRA, LoraConfig
from jaxft.models.config import DecoderConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def _kernel_specs(cfg: DecoderConfig) -> dict[tuple[str, ...], ParamSpec]:
    return {s.path[:-1]: s for s in param_specs(cfg) if s.path[-1] == "kernel"}


def _module_names(spec: ParamSpec, num_layers: int) -> list[str]:
    return [name.removesuffix(".weight") for name in spec.hf_names(num_layers)]


def save_peft(directory: str | Path, cfg: DecoderConfig, lora: LoRA,
              base_model_name_or_path: str | None = None) -> Path:
    """Write an adapter that ``peft.PeftModel.from_pretrained(model, directory)`` loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs = _kernel_specs(cfg)
    tensors: dict[str, np.ndarray] = {}
    for path, ab in lora.items():
        spec = specs.get(path)
        if spec is None:
            raise ValueError(f"'{'/'.join(path)}' has no Hugging Face name in a {cfg.model_type} model")
        a, b = (np.asarray(jax.device_get(ab[k])) for k in ("a", "b"))
        names = _module_names(spec, cfg.num_hidden_layers)
        for i, module in enumerate(names):
            a_i, b_i = (a[i], b[i]) if spec.stacked else (a, b)
            tensors[f"{_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
            tensors[f"{_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.config.rank,
        "lora_alpha": int(lora.config.alpha) if float(lora.config.alpha).is_integer() else lora.config.alpha,
        "lora_dropout": lora.config.dropout,
        "use_rslora": lora.config.use_rslora,
        "target_modules": sorted({path[-1] for path, _ in lora.items()}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


# Options that would change the adapted model's outputs; "set" means anything but
# the value in the tuple (PEFT's default).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "use_dora": (False, None),
    "modules_to_save": (None, []),
    "rank_pattern": (None, {}),
    "alpha_pattern": (None, {}),
    "layers_to_transform": (None,),
    "layer_replication": (None, []),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "fan_in_fan_out": (False, None),
    "trainable_token_indices": (None, [], {}),
    "target_parameters": (None, []),
    "use_qalora": (False, None),
    "alora_invocation_tokens": (None, []),
    "use_bdlora": (None, False),
    "arrow_config": (None,),
    "kasa_config": (None,),
    "monteclora_config": (None,),
    "megatron_config": (None,),
}


def _read_config(file: Path) -> dict[str, Any]:
    config = read_json(file, missing="adapter config not found", error=CheckpointError)
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{file}: peft_type '{config.get('peft_type')}' is not supported (only LORA)")
    for key, defaults in _UNSUPPORTED.items():
        if key in config and config[key] not in defaults:
            raise CheckpointError(f"{file}: '{key}': {json.dumps(config[key])} is not supported by jaxft")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)):
            raise CheckpointError(f"{file}: required key '{key}' is missing or not a number")
    return config


def base_model_of(directory: str | Path) -> str | None:
    """The ``base_model_name_or_path`` a PEFT adapter directory names (None when it names none)."""
    return _read_config(Path(directory) / CONFIG_FILE).get("base_model_name_or_path") or None


def load_peft(directory: str | Path, cfg: DecoderConfig, dtype=jnp.float32) -> LoRA:
    """A ``LoRA`` from a PEFT adapter directory made for a model with config ``cfg``."""
    directory = Path(directory)
    config = _read_config(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        hint = " (adapter_model.bin is not read; re-save with safe_serialization=True)" \
            if (directory / "adapter_model.bin").exists() else ""
        raise FileNotFoundError(f"{weights}: adapter weights not found{hint}")
    rank = int(config["r"])

    by_module = {}  # HF module name -> (module path, layer index or None, spec)
    for path, spec in _kernel_specs(cfg).items():
        for i, module in enumerate(_module_names(spec, cfg.num_hidden_layers)):
            by_module[module] = (path, i if spec.stacked else None, spec)

    host: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    seen: dict[tuple[str, ...], set[tuple[str, int | None]]] = {}
    for key, t in read_safetensors(weights).items():
        m = _KEY.match(key)
        if m is None or m["module"] not in by_module:
            raise CheckpointError(f"{weights}: tensor '{key}' is not the lora_A/lora_B weight of a "
                                  f"Linear module of a {cfg.model_type} model; not supported")
        path, layer, spec = by_module[m["module"]]
        d_out, d_in = spec.hf_shape
        expected = (rank, d_in) if m["ab"] == "A" else (d_out, rank)
        if tuple(t.shape) != expected:
            raise CheckpointError(f"{weights}: tensor '{key}' has shape {tuple(t.shape)}, expected "
                                  f"{expected} (r={rank} and the {cfg.model_type} config)")
        ab = m["ab"].lower()
        if path not in host:
            lead = spec.shape[:-2]
            host[path] = {"a": np.zeros(lead + (d_in, rank), np.float32),
                          "b": np.zeros(lead + (rank, d_out), np.float32)}
            seen[path] = set()
        target = host[path][ab]
        if layer is None:
            target[...] = t.T
        else:
            target[layer] = t.T
        seen[path].add((ab, layer))
    if not host:
        raise CheckpointError(f"{weights}: contains no LoRA weights")

    specs = _kernel_specs(cfg)
    params: dict[str, Any] = {}
    for path, arrays in host.items():
        names = _module_names(specs[path], cfg.num_hidden_layers)
        layers_ = range(len(names)) if specs[path].stacked else [None]
        for ab in ("a", "b"):
            for layer, module in zip(layers_, names):
                if (ab, layer) not in seen[path]:
                    raise CheckpointError(f"{weights}: tensor '{_PREFIX}{module}.lora_{ab.upper()}.weight' "
                                          f"is missing")
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {k: jnp.asarray(v, dtype) for k, v in arrays.items()}
    lora_config = LoraConfig(rank=rank, alpha=float(config["lora_alpha"]),
                             targets=tuple(dict.fromkeys(p[-1] for p in specs if p in host)),
                             dropout=float(config.get("lora_dropout") or 0.0),
                             use_rslora=bool(config.get("use_rslora", False)))
    return LoRA(params, lora_config)
