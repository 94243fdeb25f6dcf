"""minigpt: a small GPT from scratch with a SentencePiece tokenizer, SFT with a response mask, EMA and its sampler."""
