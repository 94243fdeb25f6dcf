"""The loaders behind the shared config sections (``jaxft.config``): one way to get a model and records.

    loaded = load_model(config.model, config.seed)          # cfg, params (maybe quantized), tokenizer
    records = load_records(config.data, columns=("text",))  # None: no data configured (use demo data)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxft.models.config import DecoderConfig

log = logging.getLogger("jaxft")

QUANT_FORMATS = ("none", "nf4", "int8")


class LoadedModel(NamedTuple):
    cfg: DecoderConfig
    params: dict[str, Any]
    tokenizer: Any


def load_tokenizer_spec(spec: str, model_path: str = "", key: str = "model.tokenizer"):
    """A tokenizer from a spec (see ``jaxft.config.model_section``); ``key`` names the config key in errors."""
    spec = spec or model_path
    if not spec:
        raise ValueError(f"config key '{key}' is empty and there is no model path: name a tokenizer "
                         "(a checkpoint dir, a .gguf file, a hub id, demo:bpe:4096, sentencepiece:PATH or char:PATH)")
    kind, _, rest = spec.partition(":")
    if kind == "demo":
        from jaxft.tokenization.demo import demo_tokenizer

        parts = rest.split(":")
        if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"config key '{key}'={spec!r}: expected demo:<bpe|unigram|byte>[:vocab_size]")
        return demo_tokenizer(parts[0], int(parts[1]) if len(parts) == 2 else None)
    if kind == "sentencepiece":
        from jaxft.tokenization.sentencepiece import sentencepiece_tokenizer

        return sentencepiece_tokenizer(_existing(rest, key, spec))
    if kind == "char":
        from jaxft.tokenization.char import char_tokenizer

        return char_tokenizer(_existing(rest, key, spec))
    from jaxft.tokenization import load_tokenizer

    return load_tokenizer(spec)


def _existing(path: str, key: str, spec: str) -> str:
    from pathlib import Path

    if not path or not Path(path).expanduser().exists():
        raise FileNotFoundError(f"config key '{key}'={spec!r}: no such file '{path}'")
    return str(Path(path).expanduser())


def quantize(params: dict, cfg: DecoderConfig, fmt: str, key: str = "model.quantize",
             double_quant: bool = False) -> dict:
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"config key '{key}'={fmt!r}: expected one of {', '.join(QUANT_FORMATS)}")
    if fmt == "none":
        return params
    from jaxft.quant import quantize as quantize_params

    return quantize_params(params, cfg, fmt=fmt, double_quant=double_quant and fmt == "nf4")


def load_model(model_cfg, seed: int = 0, *, section: str = "model") -> LoadedModel:
    """``config.model`` -> the decoder config, its params (quantized per ``model.quantize``) and tokenizer.

    With ``model.path`` a checkpoint dir, a ``.gguf`` file or a hub id is loaded; without, a model
    of ``model.random_init``'s HF config keys gets random weights and the tokenizer's vocabulary.
    """
    from jaxft.checkpoint.hf import load_pretrained

    dtype = jnp.dtype(model_cfg.dtype)
    tokenizer = load_tokenizer_spec(model_cfg.tokenizer, model_cfg.path, f"{section}.tokenizer")
    if model_cfg.path:
        cfg, params = load_pretrained(model_cfg.path, dtype=dtype)
    else:
        hf = dict(model_cfg.random_init.to_dict()) if hasattr(model_cfg.random_init, "to_dict") else \
            dict(model_cfg.random_init)
        if not hf:
            raise ValueError(f"config key '{section}.path' is empty: give a checkpoint dir, .gguf file or hub id "
                             f"(or {section}.random_init for random weights)")
        hf.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        cfg = DecoderConfig.from_hf(hf, source=f"config.{section}.random_init")
        from jaxft.models.init import init_params

        # initializer_range is the HF name of the init std.
        params = init_params(cfg, jax.random.PRNGKey(seed), dtype, std=float(hf.get("initializer_range", 0.02)))
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"{section}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary only "
                         f"{cfg.vocab_size}")
    params = quantize(params, cfg, str(model_cfg.quantize), f"{section}.quantize",
                      bool(model_cfg.get("double_quant", False)))
    return LoadedModel(cfg, params, tokenizer)


ON_ERROR = ("raise", "skip")


def load_records(data_cfg, columns: Sequence[str] | None = None, *, section: str = "data"):
    """Records of ``config.data`` (files or an HF dataset), or None when neither is configured.

    ``columns`` defaults to ``(data.text_column,)``; at most ``data.max_records`` are kept, and
    what was read (and skipped, with ``data.on_error=skip``) is logged.
    """
    from jaxft.data import load_hf_dataset, read_records

    if data_cfg.on_error not in ON_ERROR:
        raise ValueError(f"config key '{section}.on_error'={data_cfg.on_error!r}: expected raise or skip")
    columns = tuple(columns or (data_cfg.text_column,))
    limit = int(data_cfg.get("max_records", 0) or 0) or None
    if data_cfg.path:
        records = read_records(data_cfg.path, columns=columns, on_error=data_cfg.on_error)
        if limit is not None and len(records) > limit:
            log.info("data: keeping the first %d of %d records (%s.max_records)", limit, len(records), section)
            del records[limit:]
            if getattr(records, "origins", None) is not None:
                del records.origins[limit:]
    elif data_cfg.hf_dataset:
        records = load_hf_dataset(data_cfg.hf_dataset, data_cfg.hf_split, columns,
                                  config_name=data_cfg.get("hf_config") or None, on_error=data_cfg.on_error,
                                  streaming=bool(data_cfg.get("streaming", False)), max_records=limit)
    else:
        return None
    summary = getattr(records, "summary", None)
    if summary is not None:
        log.info("data: %s", summary)
    return records
