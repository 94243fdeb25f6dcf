"""Summarisation recipe: LoRA SFT of a decoder LLM on document/summary pairs with a boundary-weighted
loss, ROUGE evaluation by generation, and a Chinchilla compute calculator."""

from jaxft.recipes.summarize.loss import boundary_token_weights
from jaxft.recipes.summarize.recipe import build, load_export, summary_encoder

__all__ = ["boundary_token_weights", "build", "load_export", "summary_encoder"]
