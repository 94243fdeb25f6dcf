"""embedllm: Perceiver IO over the earlier turns of a conversation, condensed into one prefix vector for a LoRA-tuned LLM."""
