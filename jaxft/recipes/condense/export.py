"""A trained condenser on disk, and back.

Directory layout::

    condenser.json           sizes, layout, dtype, LoRA settings, where the base LLMs come from
    condenser.safetensors    condense_tokens, projector.*, markers.* (float32)
    adapter/                 the encoder LoRA in PEFT format (peft.PeftModel loads it)
    encoder_tokenizer/, decoder_tokenizer/
    encoder/, decoder/       full HF checkpoints, only when the base had no source to point at
                             (random demo weights) or its weights were trained (condense.train_decoder)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from safetensors.numpy import save_file

from jaxft import lora as lora_lib
from jaxft.files import flatten_tree, read_json, read_safetensors, unflatten_tree
from jaxft.checkpoint.hf import load_pretrained, save_pretrained
from jaxft.recipes.condense.data import Layout
from jaxft.recipes.condense.model import CondenseModel, projector_input_size

CONFIG_FILE = "condenser.json"
WEIGHTS_FILE = "condenser.safetensors"
FORMAT = "jaxft-condenser"
VERSION = 2  # 2: the projector is a flax module ({linear, norm}) and its kind is recorded
_TREE_KEYS = ("condense_tokens", "projector", "markers")


def export_condenser(directory: str | Path, condenser, *, encoder_source: str = "", decoder_source: str = "",
                     quantize_encoder: str = "none", quantize_decoder: str = "none") -> Path:
    """Write ``condenser`` (a ``jaxft.recipes.condense.inference.Condenser``) to ``directory``.

    ``quantize_*`` record how the frozen bases were stored in training (none, nf4, int8), so
    loading can quantize them the same way and reproduce the trained states exactly.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model: CondenseModel = condenser.model
    trainable, frozen = condenser.trainable, condenser.frozen

    adapters = lora_lib.LoRA(trainable["lora"], model.lora_config)
    lora_lib.save_peft(directory / "adapter", model.encoder, adapters, base_model_name_or_path=encoder_source or None)
    save_file(flatten_tree({k: trainable[k] for k in _TREE_KEYS}), str(directory / WEIGHTS_FILE),
              metadata={"format": FORMAT})
    condenser.encoder_tokenizer.save_pretrained(str(directory / "encoder_tokenizer"))
    condenser.decoder_tokenizer.save_pretrained(str(directory / "decoder_tokenizer"))

    bundle_encoder = not encoder_source
    bundle_decoder = not decoder_source or model.train_decoder
    # save_pretrained reads jax arrays (host copies from the trainer arrive as numpy).
    if bundle_encoder:
        save_pretrained(directory / "encoder", model.encoder, jax.tree.map(jnp.asarray, frozen["encoder"]))
    if bundle_decoder:
        save_pretrained(directory / "decoder", model.decoder,
                        jax.tree.map(jnp.asarray, model.decoder_params(trainable, frozen)))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": {"source": encoder_source, "bundled": bundle_encoder, "hidden_size": model.encoder.hidden_size},
        "decoder": {"source": decoder_source, "bundled": bundle_decoder, "hidden_size": model.decoder.hidden_size},
        "dtype": jnp.dtype(model.dtype).name,
        "layout": dataclasses.asdict(condenser.layout),
        "lora": dataclasses.asdict(model.lora_config),
        "projector": model.projector,
        "positions": model.positions,
        "quantize": {"encoder": quantize_encoder, "decoder": "none" if model.train_decoder else quantize_decoder},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def _read_meta(directory: Path) -> dict[str, Any]:
    file = directory / CONFIG_FILE
    meta = read_json(file, missing=f"not found; is {directory} a condenser export?")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{file}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                         f"expected {FORMAT!r} version {VERSION}")
    for key in ("encoder", "decoder", "dtype", "layout", "lora", "projector"):
        if key not in meta:
            raise ValueError(f"{file}: key '{key}' is missing")
    return meta


def _base_path(directory: Path, meta: dict, which: str, override: str | None) -> str:
    if override:
        return override
    if meta[which]["bundled"]:
        return str(directory / which)
    if not meta[which]["source"]:
        raise ValueError(f"{directory / CONFIG_FILE}: no {which} source recorded; pass {which}_path")
    return meta[which]["source"]


def _check_shape(file: Path, name: str, tree: dict, path: tuple[str, ...], shape: tuple[int, ...]) -> None:
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{file}: tensor '{'.'.join(path)}' is missing")
        node = node[key]
    if tuple(node.shape) != shape:
        raise ValueError(f"{file}: tensor '{'.'.join(path)}' has shape {tuple(node.shape)}, {name} needs {shape}")


def read_condenser(directory: str | Path, *, encoder_path: str | None = None, decoder_path: str | None = None,
                   dtype=None, quantize: bool = True):
    """The ``Condenser`` written by ``export_condenser`` (see ``inference.load_condenser``).

    With ``quantize`` the bases are quantized as they were in training (``condenser.json``).
    """
    from transformers import AutoTokenizer

    from jaxft.recipes.condense.inference import Condenser

    directory = Path(directory)
    meta = _read_meta(directory)
    dtype = jnp.dtype(dtype or meta["dtype"])
    layout = Layout(**meta["layout"])
    enc_cfg, enc_params = load_pretrained(_base_path(directory, meta, "encoder", encoder_path), dtype=dtype)
    dec_cfg, dec_params = load_pretrained(_base_path(directory, meta, "decoder", decoder_path), dtype=dtype)
    adapters = lora_lib.load_peft(directory / "adapter", enc_cfg)
    weights_file = directory / WEIGHTS_FILE
    tree = unflatten_tree(read_safetensors(weights_file))
    n, h_enc, h_dec = layout.num_condense_tokens, enc_cfg.hidden_size, dec_cfg.hidden_size
    model = CondenseModel(encoder=enc_cfg, decoder=dec_cfg, num_condense_tokens=n,
                          segment_length=layout.segment_length, dtype=dtype, lora_config=adapters.config,
                          projector=meta["projector"], positions=meta.get("positions", "spread"))
    h_in = projector_input_size(model)
    h_norm = h_in if model.projector == "reference" else h_dec
    for path, shape in ((("condense_tokens",), (n, h_enc)), (("projector", "linear", "kernel"), (h_in, h_dec)),
                        (("projector", "linear", "bias"), (h_dec,)), (("projector", "norm", "scale"), (h_norm,)),
                        (("projector", "norm", "bias"), (h_norm,)), (("markers", "ae"), (h_dec,)),
                        (("markers", "cont"), (h_dec,))):
        _check_shape(weights_file, "this encoder/decoder pair", tree, path, shape)
    trainable = {"lora": adapters.params, **tree}
    formats = meta.get("quantize", {}) if quantize else {}
    for fmt in formats.values():
        if fmt not in ("none", "nf4", "int8"):
            raise ValueError(f"{directory / CONFIG_FILE}: unknown quantize format {fmt!r}")
    if formats.get("encoder", "none") != "none":
        enc_params = lora_lib.quantize(enc_params, enc_cfg, fmt=formats["encoder"])
    if formats.get("decoder", "none") != "none":
        dec_params = lora_lib.quantize(dec_params, dec_cfg, fmt=formats["decoder"])
    frozen = {"encoder": enc_params, "decoder": dec_params}
    tokenizers = [AutoTokenizer.from_pretrained(str(directory / f"{w}_tokenizer"), use_fast=True)
                  for w in ("encoder", "decoder")]
    return Condenser(model=model, layout=layout, trainable=trainable, frozen=frozen,
                     encoder_tokenizer=tokenizers[0], decoder_tokenizer=tokenizers[1])
