"""A fine-tuned decoder on disk and back, one layout for every causal-LM recipe.

    <export>/model/      full fine-tuning: a transformers checkpoint
    <export>/adapter/    LoRA: the adapter in PEFT format (``base_model_name_or_path`` = the base's source)
    <export>/merged/     LoRA, optional: the base with the adapter merged in (dequantized)
    <export>/base/       the base, when it has no source to reload it from (a random init)
    <export>/tokenizer/  the tokenizer, where a recipe keeps it apart from the weights
    <export>/<name>.json the recipe's settings (decoding, prompts, the run's config)

``load_finetuned`` reads any of them into one ``Finetuned``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.models.config import DecoderConfig

if TYPE_CHECKING:
    from jaxft.train.lm import LM

Params = dict[str, Any]


@dataclasses.dataclass
class Finetuned:
    """A fine-tuned decoder read back from an export."""

    directory: Path
    cfg: DecoderConfig
    params: Params  # the base under ``adapters`` (maybe quantized), or the tuned model when adapters is None
    adapters: lora_lib.LoRA | None
    tokenizer: Any  # None when the export holds none
    settings: dict  # the recipe's settings file; {} without one

    @property
    def tuned(self) -> Params:
        """The params a forward pass of the tuned model reads."""
        return self.params if self.adapters is None else lora_lib.apply(self.params, self.adapters)

    def config(self):
        """The run's config recorded in the settings (``settings["config"]``)."""
        from ml_collections import ConfigDict

        return ConfigDict(self.settings["config"])


def _dequantized(lm: LM, trainable: Params, base: Params) -> Params:
    """Plain arrays of a LoRA base: merging zero adapters dequantizes a quantized one."""
    adapters = lm.adapters(trainable)
    zeros = lora_lib.LoRA(jax.tree.map(np.zeros_like, jax.device_get(adapters.params)), adapters.config)
    return lora_lib.merge(lm.cfg, jax.device_get(base), zeros)


def export_finetuned(directory: str | Path, lm: LM, trainable: Params, frozen: Params, *, source: str | None,
                     tokenizer: Any = None, tokenizer_in: Sequence[str] = ("model", "merged"), merged: bool = False,
                     base: Params | None = None, settings: dict | None = None,
                     settings_file: str | None = None) -> Path:
    """Write the tuned model (see the module docstring); ``source`` is the base's path or hub id.

    ``tokenizer_in`` names the parts that get a copy of ``tokenizer`` (``"tokenizer"`` for a folder of
    its own); ``base`` is written to ``base/`` (dequantized under LoRA); ``settings`` to ``settings_file``.
    """
    from jaxft.checkpoint.hf import save_pretrained

    if settings is not None and not settings_file:
        raise ValueError("export_finetuned: settings need a settings_file to be written to")
    if tokenizer is None and set(tokenizer_in) & {"adapter", "tokenizer"}:
        raise ValueError(f"export_finetuned: tokenizer_in={tuple(tokenizer_in)} but no tokenizer is given")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = {part: tokenizer if part in tokenizer_in else None for part in ("model", "merged", "base")}
    if lm.full:
        save_pretrained(directory / "model", lm.cfg, trainable["model"], tokenizer=tok["model"])
    else:
        adapters = lm.adapters(trainable)
        lora_lib.save_peft(directory / "adapter", lm.cfg, adapters, base_model_name_or_path=source or None)
        if "adapter" in tokenizer_in:
            tokenizer.save_pretrained(str(directory / "adapter"))
        if merged:
            save_pretrained(directory / "merged", lm.cfg, lora_lib.merge(lm.cfg, jax.device_get(frozen["base"]),
                                                                         adapters), tokenizer=tok["merged"])
    if base is not None:
        plain = jax.device_get(base) if lm.full else _dequantized(lm, trainable, base)
        save_pretrained(directory / "base", lm.cfg, plain, tokenizer=tok["base"])
    if "tokenizer" in tokenizer_in:
        shutil.rmtree(directory / "tokenizer", ignore_errors=True)
        tokenizer.save_pretrained(str(directory / "tokenizer"))
    if settings is not None:
        (directory / settings_file).write_text(json.dumps(settings, indent=2, default=str) + "\n")
    return directory


def read_tokenizer(directory: Path):
    """The tokenizer saved in ``directory`` (a model folder or a tokenizer folder), or None."""
    from jaxft.tokenization import load_tokenizer
    from jaxft.tokenization.pretrained import TOKENIZER_FILES

    if (directory / "tokenizer.json").is_file() and (directory / "config.json").is_file():
        # Read directly: AutoTokenizer would look up the model type (transformers knows no minigpt).
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return load_tokenizer(directory)
    return None


def _settings(directory: Path, settings_file: str | None, missing: str, required: Sequence[str]) -> dict:
    from jaxft.files import read_json

    if settings_file is None:
        return {}
    file = directory / settings_file
    settings = read_json(file, missing=missing)
    if not isinstance(settings, dict):
        raise ValueError(f"{file}: expected a JSON object")
    for key in required:
        if key not in settings:
            raise ValueError(f"{file}: missing key '{key}'")
    return settings


def _base_source(directory: Path, settings: dict, override: str | None) -> str | Path | None:
    """Where a LoRA export's base comes from: the override, ``base/``, the settings' ``base_model``
    (relative to the export when it names a folder in it), or the adapter's ``base_model_name_or_path``."""
    from jaxft.lora.peft import base_model_of

    if override:
        return directory / override if (directory / override).is_dir() else override
    if (directory / "base").is_dir():
        return directory / "base"
    recorded = settings.get("base_model")
    if recorded:
        return directory / recorded if (directory / recorded).is_dir() else recorded
    return base_model_of(directory / "adapter")


def _model_dir(directory: Path, merged_first: bool) -> Path | None:
    """The folder of a whole tuned model: merged/ (when preferred), model/, or the export itself when it
    is a model folder; None for an adapter over its base."""
    if merged_first and (directory / "merged" / "config.json").is_file():
        return directory / "merged"
    if (directory / "model" / "config.json").is_file():
        return directory / "model"
    if (directory / "config.json").is_file() and not (directory / "adapter").is_dir():
        return directory
    return None


def load_finetuned(directory: str | Path, *, base: str | None = None, merged_first: bool = False,
                   settings_file: str | None = None, missing: str = "not found", required: Sequence[str] = (),
                   need_tokenizer: bool = False) -> Finetuned:
    """Read an export written by ``export_finetuned`` (or a plain model folder); raises naming the part.

    A LoRA export gives the base (quantized as ``settings["quantize"]`` says) with its adapters; with
    ``merged_first`` a ``merged/`` copy is read instead (the adapter is still checked against it).
    ``base`` replaces the recorded base (a local copy). The settings' ``dtype`` (default float32)
    is the weights' dtype.
    """
    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.loaders import quantize

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such export directory")
    settings = _settings(directory, settings_file, missing, required)
    tokenizer = read_tokenizer(directory / "tokenizer") if (directory / "tokenizer").is_dir() else None
    if need_tokenizer and tokenizer is None:
        raise FileNotFoundError(f"{directory / 'tokenizer'}: the export has no tokenizer")
    dtype = jnp.dtype(settings.get("dtype", "float32"))
    adapter = directory / "adapter"
    model = _model_dir(directory, merged_first)
    if model is not None:
        cfg, params = load_pretrained(model, dtype=dtype)
        if adapter.is_dir():
            lora_lib.load_peft(adapter, cfg)  # raises on an adapter that does not fit the model
        return Finetuned(directory, cfg, params, None, read_tokenizer(model) if tokenizer is None else tokenizer,
                         settings)
    if not adapter.is_dir():
        raise FileNotFoundError(f"{directory}: no model/, adapter/ or merged/ export to load")
    source = _base_source(directory, settings, base)
    if not source:
        raise FileNotFoundError(f"{directory}: the adapter names no base model, and there is no base/")
    cfg, params = load_pretrained(source, dtype=dtype)
    params = quantize(params, cfg, settings.get("quantize", "none"), double_quant=bool(settings.get("double_quant")))
    return Finetuned(directory, cfg, params, lora_lib.load_peft(adapter, cfg), tokenizer, settings)
