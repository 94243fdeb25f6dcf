"""embedllm: Perceiver IO over the earlier turns of a conversation, condensed into one prefix vector for a
LoRA-tuned LLM that reads [prefix, last turn]."""

from jaxft.recipes.embedllm.recipe import build, load_export

__all__ = ["build", "load_export"]
