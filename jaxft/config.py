"""Config sections shared by every recipe (ml_collections).

Recipe configs under ``configs/`` start from ``base_config()`` and add their
own section; ``python -m jaxft.main --config configs/<recipe>.py:<preset>``
loads them, and ``--config.a.b=value`` overrides any key (types are checked).
"""

from __future__ import annotations

from ml_collections import ConfigDict, FieldReference

from jaxft.lora.adapters import DEFAULT_TARGETS
from jaxft.train.optim import default_config as optim_defaults


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
    c = ConfigDict()
    c.recipe = ""
    c.seed = 0

    c.mesh = ConfigDict()
    c.mesh.shape = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.rules = ConfigDict()  # logical axis -> mesh axis overrides, e.g. {"embed": "fsdp"}

    steps = FieldReference(100)
    c.optim = optim_defaults()  # schedule, AdamW betas/eps, weight decay, clipping, groups
    c.optim.schedule.total_steps = steps
    c.optim.schedule.warmup_steps = 10
    c.optim.schedule.end_lr_ratio = 0.1
    c.optim.accum_steps = 1
    c.optim.ema_decay = 0.0  # > 0 keeps an EMA of the trainable params
    c.optim.eval_with_ema = False

    c.train = ConfigDict()
    c.train.steps = steps
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_batches = 4
    c.train.eval_at_start = False  # eval (and samples) before the first step: a "before" reference
    c.train.early_stopping = ConfigDict({"metric": "loss", "mode": "min", "patience": 0})

    c.checkpoint = ConfigDict()
    c.checkpoint.dir = ""  # default: <workdir>/checkpoints; gs:// URLs work
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.loss = ConfigDict()
    c.loss.chunk_size = 1024  # tokens per logits chunk; 0 materialises full logits

    c.export = ConfigDict()
    c.export.source = "best"  # best | last: which checkpoint's params the export is made from
    c.export.hub_repo = ""  # USER/NAME: also upload the export to the Hugging Face hub

    c.train.max_skipped_updates = 10  # stop (exit != 0, no export) after this many non-finite updates in a row

    c.logging = ConfigDict()
    c.logging.wandb = False  # also log to Weights & Biases (needs `pip install wandb`)
    c.logging.wandb_project = "jaxft"
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
