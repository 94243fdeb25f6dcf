"""Import the reference trainer's released weights (``condenses/condense-trainer``) into the condense design.

Its R1 checkpoint (Nov 2024) is ``checkpoints/modules.pt`` -- condense tokens and the linear/norm
projector (``jaxft.recipes.condense.reference_formats``) -- and the encoder's PEFT LoRA
(``adapter_config.json`` + ``adapter_model.safetensors`` at the repo's root). The later two formats
(Dec 2024 ``modules``, Jan 2025 ``gist``) have no projector; they import into ``condense.design=gist``
(``jaxft.recipes.condense.gist``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp

from jaxft.recipes.condense.reference_formats import FORMATS, MODULES_FILE, find_modules_file, read_reference

__all__ = ["MODULES_FILE", "find_modules_file", "import_reference", "load_adapter_beside"]


def _lora_shape(config) -> tuple:
    """What must agree between an imported adapter and config.lora (target order and dropout need not)."""
    return config.rank, float(config.alpha), frozenset(config.targets), bool(config.use_rslora)


def load_adapter_beside(path: str | Path, file: Path, cfg, lora_config) -> dict | None:
    """The PEFT adapter next to a reference ``modules.pt`` (at the repo root or beside the file), as
    jaxft LoRA params; None when there is none. Its rank, alpha and targets must match ``lora_config``."""
    from jaxft import lora as lora_lib

    root = Path(path).expanduser()
    root = root if root.is_dir() else file.parent
    for adapter_dir in (root, file.parent, file.parent.parent):
        if (adapter_dir / "adapter_config.json").is_file():
            adapters = lora_lib.load_peft(adapter_dir, cfg)
            if lora_config is not None and _lora_shape(adapters.config) != _lora_shape(lora_config):
                raise ValueError(f"{adapter_dir / 'adapter_config.json'}: the adapter is {adapters.config}; set "
                                 f"config.lora to match it (now {lora_config})")
            return adapters.params
    return None


def import_reference(path: str | Path, model, trainable: dict[str, Any]) -> dict[str, Any]:
    """``trainable`` with condense tokens, projector (and the LoRA, when an adapter sits next to the
    weights) replaced by R1's. Markers keep their values (R1 has none)."""
    if model.projector != "reference":
        raise ValueError("config key 'condense.init_from': the reference's weights need condense.projector=reference")
    file = find_modules_file(path)
    w = read_reference(file)
    if w.format != "r1":
        raise ValueError(f"{file}: a {FORMATS[w.format]} checkpoint has no projector; it imports into "
                         "condense.design=gist (configs/condense.py:seed_gist)")
    n, h_enc, h_dec = model.num_condense_tokens, model.encoder.hidden_size, model.decoder.hidden_size
    needs = "this encoder/decoder pair with condense.projector=reference"
    tokens = w.expect("modules.pre_condensed_tokens", (1, n, h_enc), needs)
    weight = w.expect("modules.linear_state_dict.weight", (h_dec, 2 * h_enc), needs)
    bias = w.expect("modules.linear_state_dict.bias", (h_dec,), needs)
    scale = w.expect("modules.norm_state_dict.weight", (2 * h_enc,), needs)
    shift = w.expect("modules.norm_state_dict.bias", (2 * h_enc,), needs)
    out = dict(trainable)
    out["condense_tokens"] = jnp.asarray(tokens[0])
    out["projector"] = {
        "linear": {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)},  # torch [out, in] -> flax [in, out]
        "norm": {"scale": jnp.asarray(scale), "bias": jnp.asarray(shift)},
    }
    lora = load_adapter_beside(path, file, model.encoder, model.lora_config)
    if lora is not None:
        out["lora"] = lora
    return out
