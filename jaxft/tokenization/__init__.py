"""Tokenizers: the one a checkpoint ships with, or Qwen's and Mistral's built offline."""

from jaxft.tokenization.mistral import mistral_tokenizer
from jaxft.tokenization.pretrained import TokenizerError, load_tokenizer
from jaxft.tokenization.qwen import qwen_tokenizer

__all__ = ["load_tokenizer", "TokenizerError", "qwen_tokenizer", "mistral_tokenizer"]
