"""Tiny random transformers models of every supported family, for parity tests."""

from __future__ import annotations

from pathlib import Path

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)

CONFIGS = {
    "llama": ("LlamaConfig", dict(COMMON, tie_word_embeddings=False, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64))),
    "llama_tied": ("LlamaConfig", dict(COMMON, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(COMMON, sliding_window=8, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(COMMON, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(COMMON, head_dim=24, tie_word_embeddings=False)),
}


def hf_model(name: str, seed: int = 0):
    import torch
    import transformers

    cls_name, kwargs = CONFIGS[name]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random norms and biases, so a mix-up of those cannot hide behind ones/zeros.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in n else 0.1 * torch.randn_like(p))
    return model.eval()


def save_tiny(name: str, directory: Path, **save_kwargs) -> Path:
    model = hf_model(name)
    model.save_pretrained(directory, **save_kwargs)
    return Path(directory)
