"""What a minigpt run exports, and reading it back.

    <export>/model/     full training: config.json + safetensors + the tokenizer (transformers files, and
                        tokenizer.model when the tokenizer is a SentencePiece model)
    <export>/adapter/   LoRA SFT: the adapter in PEFT format (the base is the init_from checkpoint)
    <export>/merged/    LoRA SFT: the base with the adapter merged in, + the tokenizer
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jaxft.tokenization.sentencepiece import SPM_FILE


def save_model(directory: str | Path, cfg, params, tokenizer, spm_model: str | Path | None) -> Path:
    """``save_pretrained`` with the tokenizer beside it (and its SentencePiece model, for GGUF export)."""
    from jaxft.checkpoint.hf import save_pretrained

    directory = Path(directory)
    save_pretrained(directory, cfg, params, tokenizer=tokenizer)
    if spm_model is not None and Path(spm_model).is_file():
        shutil.copyfile(spm_model, directory / SPM_FILE)
    return directory


def model_dir(path: str | Path) -> Path:
    """The model directory inside an export (merged/ before model/), or ``path`` itself if it is one."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for name in ("merged", "model"):
        if (path / name / "config.json").is_file():
            return path / name
    if not path.exists():
        raise FileNotFoundError(f"--ckpt: no such directory '{path}'")
    raise FileNotFoundError(f"{path}: no config.json, merged/ or model/ (a minigpt export or a model directory)")


def load_for_inference(path: str | Path) -> tuple[Any, dict, Any]:
    """``(cfg, params, tokenizer)`` of an export or model directory."""
    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.tokenization import load_tokenizer

    directory = model_dir(path)
    cfg, params = load_pretrained(directory)
    if (directory / "tokenizer.json").is_file():
        # Read directly: AutoTokenizer would look up the (transformers-unknown) minigpt model type.
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    else:
        tokenizer = load_tokenizer(directory)
    return cfg, params, tokenizer


def spm_model_of(directory: str | Path) -> Path | None:
    file = Path(directory) / SPM_FILE
    return file if file.is_file() else None


def load_export(directory: str):
    """``(cfg, params, tokenizer)`` read back from a minigpt export; for a LoRA export the PEFT adapter
    is also checked against the merged model's shapes."""
    from jaxft import lora as lora_lib

    cfg, params, tokenizer = load_for_inference(directory)
    adapter = Path(directory) / "adapter"
    if adapter.is_dir():
        lora_lib.load_peft(adapter, cfg)  # raises on a broken adapter
    return cfg, params, tokenizer
