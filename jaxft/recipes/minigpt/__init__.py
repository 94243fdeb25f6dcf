"""minigpt: a small GPT from scratch with a SentencePiece tokenizer, SFT with a response mask, EMA and its sampler."""

from jaxft.recipes.minigpt.export import load_export
from jaxft.recipes.minigpt.recipe import build

__all__ = ["build", "load_export"]
