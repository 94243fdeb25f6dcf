"""Model shapes the bench knows by name, as Hugging Face ``config.json`` dicts.

Dimensions are those of the published checkpoints; weights are always random.
The bench builds both sides (jaxft and the transformers peer) from the same
dict, so they run exactly the same architecture.
"""

from __future__ import annotations

from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=40960, tie_word_embeddings=True),
    "qwen3-4b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=40960, tie_word_embeddings=True),
    "llama-3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192)),
    # Llama-3.1-8B(-Instruct), the one LLM of the condense recipe's seed_gist preset.
    "llama-3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192)),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=True),
    # Mistral-7B-Instruct-v0.2, the condense recipe's decoder (no sliding window, rope theta 1e6).
    "mistral-7b": dict(
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1000000.0,
        max_position_embeddings=32768, sliding_window=None, tie_word_embeddings=False),
}


def hf_config(model: str | None, *, arch: str = "qwen3", hidden: int = 512, layers: int = 8, heads: int = 8,
              kv_heads: int = 4, head_dim: int = 64, ffn: int = 1536, vocab: int = 32000) -> dict[str, Any]:
    """The config dict of a named model, or of a custom shape from the CLI flags."""
    if model:
        if model not in MODELS:
            raise SystemExit(f"unknown --model '{model}' (known: {', '.join(MODELS)})")
        hf = dict(MODELS[model])
    else:
        hf = dict(model_type=arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  head_dim=head_dim, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
                  tie_word_embeddings=False)
    # No EOS: random weights may emit any id, and generation must run its full length.
    hf.update(bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return hf


def from_args(args) -> dict[str, Any]:
    """``hf_config`` from the bench's model flags (``--model`` or the shape flags)."""
    return hf_config(args.model, arch=args.arch, hidden=args.hidden, layers=args.layers, heads=args.heads,
                     kv_heads=args.kv_heads, head_dim=args.head_dim, ffn=args.ffn, vocab=args.vocab)
