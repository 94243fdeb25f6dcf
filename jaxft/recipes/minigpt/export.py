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
from jaxft.train.lm_export import Finetuned, load_finetuned


def save_model(directory: str | Path, cfg, params, tokenizer, spm_model: str | Path | None) -> Path:
    """``save_pretrained`` with the tokenizer beside it (and its SentencePiece model, for GGUF export)."""
    from jaxft.checkpoint.hf import save_pretrained

    directory = Path(directory)
    save_pretrained(directory, cfg, params, tokenizer=tokenizer)
    copy_spm_model(directory, spm_model)
    return directory


def copy_spm_model(directory: Path, spm_model: str | Path | None) -> None:
    if spm_model is not None and Path(spm_model).is_file():
        shutil.copyfile(spm_model, directory / SPM_FILE)


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
    from jaxft.train.lm_export import read_tokenizer

    directory = model_dir(path)
    cfg, params = load_pretrained(directory)
    tokenizer = read_tokenizer(directory)
    # without tokenizer files, load_tokenizer raises naming what is missing
    return cfg, params, load_tokenizer(directory) if tokenizer is None else tokenizer


def spm_model_of(directory: str | Path) -> Path | None:
    file = Path(directory) / SPM_FILE
    return file if file.is_file() else None


def load_export(directory: str) -> Finetuned:
    """The tuned model of a minigpt export (merged/ before model/); a LoRA export's PEFT adapter is
    checked against the merged model's shapes."""
    return load_finetuned(directory, merged_first=True)
