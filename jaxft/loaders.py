"""The loaders behind the shared config sections (``jaxft.config``): one way to get a model and records.

    loaded = load_model(config.model, config.seed, placement=placement)  # cfg, params (maybe quantized), tokenizer
    records = load_records(config.data, columns=("text",))  # None: no data configured (use demo data)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.config import DecoderConfig


class Placement(Protocol):
    """Where each leaf goes (``jaxft.train.placement.Placement`` is one): only what loading asks of it."""

    def sharding_for(self, path: tuple[str, ...], shape: tuple[int, ...]) -> jax.sharding.Sharding: ...

    def shardings(self, tree: Any) -> Any: ...

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
    _check_format(fmt, key)
    if fmt == "none":
        return params
    from jaxft.quant import quantize as quantize_params

    return quantize_params(params, cfg, fmt=fmt, double_quant=double_quant and fmt == "nf4")


def _check_format(fmt: str, key: str) -> None:
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"config key '{key}'={fmt!r}: expected one of {', '.join(QUANT_FORMATS)}")


def is_quantized_target(path: tuple[str, ...]) -> bool:
    """The kernels ``jaxft.quant.quantize`` quantizes by default: every Linear of the decoder layers."""
    return path[:2] == ("model", "layers") and path[-1] == "kernel"


def leaf_placer(placement: Placement | None, fmt: str = "none", double_quant: bool = False):
    """``(spec, host tensor) -> leaf`` for ``load_pretrained(place=)``: each tensor straight onto its sharding
    (the default device without a placement); with ``fmt`` nf4/int8 the decoder layers' kernels are
    quantized there, each device quantizing its own share (``jaxft.quant.placed``)."""
    from jaxft.checkpoint.hf import onto
    from jaxft.quant.placed import quantize_onto

    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def sharding_for(path, shape):
        return placement.sharding_for(path, shape) if placement is not None else None

    def place(spec, host):
        if fmt == "none" or not is_quantized_target(spec.path):
            return onto(host, sharding_for(spec.path, spec.shape))
        return quantize_onto(host, lambda name, shape: sharding_for(spec.path + (name,), shape) or default, fmt,
                             double_quant=double_quant and fmt == "nf4")

    return place


def _random_params(cfg: DecoderConfig, seed: int, dtype, std: float, placement, place) -> dict:
    """Random weights (eager, so the values stay those of ``init_params``) moved onto the placement,
    then quantized kernel by kernel. Unlike a checkpoint they are made whole on one device first."""
    from jaxft.checkpoint.hf_names import param_specs
    from jaxft.models import paths
    from jaxft.models.init import init_params

    params = init_params(cfg, jax.random.PRNGKey(seed), dtype, std=std)
    if placement is not None:
        params = jax.device_put(params, placement.shardings(params))
    for spec in param_specs(cfg):
        if is_quantized_target(spec.path) and place is not None:
            host = np.asarray(jax.device_get(paths.get(params, spec.path)))
            params = paths.replace(params, spec.path, place(spec, host))
    return params


def load_model(model_cfg, seed: int = 0, *, section: str = "model", placement: Placement | None = None
               ) -> LoadedModel:
    """``config.model`` -> the decoder config, its params (quantized per ``model.quantize``) and tokenizer.

    With ``model.path`` a checkpoint dir, a ``.gguf`` file or a hub id is loaded; without, a model
    of ``model.random_init``'s HF config keys gets random weights and the tokenizer's vocabulary.
    Every checkpoint tensor is streamed straight onto ``placement.sharding_for`` (the default device
    without a placement) and quantized there shard by shard, so no device ever holds the whole model,
    quantized or not; ``Trainer`` then finds the frozen trees already placed.
    """
    from jaxft.checkpoint.hf import load_pretrained

    dtype = jnp.dtype(model_cfg.dtype)
    fmt = str(model_cfg.quantize)
    _check_format(fmt, f"{section}.quantize")
    place = leaf_placer(placement, fmt, bool(model_cfg.get("double_quant", False)))
    tokenizer = load_tokenizer_spec(model_cfg.tokenizer, model_cfg.path, f"{section}.tokenizer")
    if model_cfg.path:
        cfg, params = load_pretrained(model_cfg.path, dtype=dtype, place=place)
    else:
        hf = dict(model_cfg.random_init.to_dict()) if hasattr(model_cfg.random_init, "to_dict") else \
            dict(model_cfg.random_init)
        if not hf:
            raise ValueError(f"config key '{section}.path' is empty: give a checkpoint dir, .gguf file or hub id "
                             f"(or {section}.random_init for random weights)")
        hf.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        cfg = DecoderConfig.from_hf(hf, source=f"config.{section}.random_init")
        # initializer_range is the HF name of the init std.
        params = _random_params(cfg, seed, dtype, float(hf.get("initializer_range", 0.02)), placement,
                                place if fmt != "none" else None)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"{section}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary only "
                         f"{cfg.vocab_size}")
    return LoadedModel(cfg, params, tokenizer)


class LoadFootprint(NamedTuple):
    """What streaming a model onto a placement holds, from shapes alone: per device its final shards
    (``resident``) and an upper bound of what placing one tensor adds on top (``working``); per process
    the largest host tensor (the loader reads one at a time)."""

    resident: dict
    working: dict
    host_bytes: int

    def peak_per_device(self) -> int:
        return max(self.resident.get(d, 0) + self.working.get(d, 0) for d in set(self.resident) | set(self.working))

    def then(self, other: LoadFootprint) -> LoadFootprint:
        """Loading ``other`` after this one: both stay resident; the tensors' working bytes never overlap."""
        devices = set(self.resident) | set(other.resident)
        return LoadFootprint({d: self.resident.get(d, 0) + other.resident.get(d, 0) for d in devices},
                             {d: max(self.working.get(d, 0), other.working.get(d, 0)) for d in devices},
                             max(self.host_bytes, other.host_bytes))


def load_footprint(cfg: DecoderConfig, dtype, placement: Placement, fmt: str = "none",
                   double_quant: bool = False) -> LoadFootprint:
    """``LoadFootprint`` of ``load_model`` for a checkpoint of ``cfg`` loaded in ``dtype`` onto ``placement``."""
    from jaxft.checkpoint.hf_names import param_specs
    from jaxft.quant import placed

    dtype = jnp.dtype(dtype)
    resident: dict = {}
    working: dict = {}
    host = 0

    def add(shape, leaf_dtype, sharding):
        for d, n in placed.shard_bytes(shape, leaf_dtype, sharding).items():
            resident[d] = resident.get(d, 0) + n

    for spec in param_specs(cfg):
        host = max(host, int(np.prod(spec.shape)) * dtype.itemsize)
        if fmt == "none" or not is_quantized_target(spec.path):
            add(spec.shape, dtype, placement.sharding_for(spec.path, spec.shape))
            continue
        sharding_of = lambda name, shape, path=spec.path: placement.sharding_for(path + (name,), shape)
        like = placed.quantized_shapes(spec.shape, dtype, fmt, double_quant=double_quant)
        for leaf, name in ((getattr(like, n), n) for n in placed.ARRAYS):
            if leaf is not None:
                add(leaf.shape, leaf.dtype, sharding_of(name, leaf.shape))
        for d, n in placed.working_bytes(spec.shape, dtype, sharding_of, fmt, double_quant=double_quant).items():
            working[d] = max(working.get(d, 0), n)
    return LoadFootprint(resident, working, host)


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
