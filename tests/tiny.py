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


def float64_reference(model):
    """A copy of a transformers decoder that computes in float64 throughout.

    ``model.double()`` alone is not a float64 run: transformers' RMSNorm, rotary tables and
    eager softmax compute in float32 whatever the model dtype. Here the norms and rotary
    tables are float64 and attention runs through SDPA (float64 on CPU). The only float32
    numbers left are the weights and the rotary inverse frequencies (within one float32 ulp).
    """
    import copy
    import types

    import torch

    ref = copy.deepcopy(model).double().eval()
    ref.set_attn_implementation("sdpa")

    def rms_norm(self, x):
        x = x.double()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary(self, x, position_ids):
        angles = position_ids[..., None].double() * self.inv_freq.double()
        emb = torch.cat((angles, angles), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    for module in ref.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = types.MethodType(rms_norm, module)
        elif name.endswith("RotaryEmbedding"):
            module.forward = types.MethodType(rotary, module)
    return ref


def assert_as_close_to_float64(ours, theirs, exact, *, margin: float = 1.5, max_margin: float = 4.0,
                               floor: float = 2e-7) -> tuple[float, float]:
    """float32 logits ``ours`` [tokens, vocab] are about as close to the float64 ``exact`` as
    transformers' float32 ``theirs``: the mean over tokens of the largest error within ``margin``
    times theirs, the largest error within ``max_margin`` times theirs (single tokens vary with
    the summation order of each matmul), and the same argmax everywhere. Returns both means."""
    import numpy as np

    ours, theirs, exact = (np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1]) for a in (ours, theirs, exact))
    err_ours, err_theirs = np.abs(ours - exact).max(-1), np.abs(theirs - exact).max(-1)
    assert err_ours.mean() <= margin * err_theirs.mean() + floor, (err_ours.mean(), err_theirs.mean())
    assert err_ours.max() <= max_margin * err_theirs.max() + floor, (err_ours.max(), err_theirs.max())
    np.testing.assert_array_equal(ours.argmax(-1), exact.argmax(-1))
    return float(err_ours.mean()), float(err_theirs.mean())


def save_qwen3_with_tokenizer(directory: Path, tokenizer, *, max_position_embeddings: int) -> Path:
    """A tiny random Qwen3 checkpoint (tied embeddings) over the real Qwen tokenizer's vocabulary, written by
    transformers with that tokenizer beside it: the shape of a hub Qwen3 folder."""
    import torch
    import transformers

    config = transformers.Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
                                      bos_token_id=151643, eos_token_id=151645)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)
