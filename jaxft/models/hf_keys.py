"""Which ``config.json`` keys the decoder accepts: the ones it reads, the harmless ones, and the ones
harmless only at their neutral value. Any other key is refused by name, so a checkpoint whose config asks
for something the decoder does not do (attention dropout, a quantization scheme, multimodal RoPE) fails to
load instead of loading as a different model."""

from __future__ import annotations

from typing import Any

from jaxft.errors import ConfigError

# Read by DecoderConfig.from_hf (or checked there: an unsupported value is refused by name).
READ = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "partial_rotary_factor", "max_position_embeddings", "tie_word_embeddings",
    "attention_bias", "mlp_bias", "pretraining_tp", "sliding_window", "use_sliding_window", "layer_types",
    "bos_token_id", "eos_token_id", "pad_token_id",
    "dropout",  # embedding, attention-probability, attention-output and MLP-output dropout (training only)
    "initializer_range",  # the std of random_init's weights
})
# The block-shape keys only the "minigpt" family reads.
READ_MINIGPT = frozenset({"norm_type", "layer_norm_eps", "position_embedding_type", "embedding_multiplier",
                          "parallel_residual"})
# No effect on the decoder's maths: provenance, dtype of the stored weights (loading casts to model.dtype),
# transformers' output and caching switches, classification-head labels, and Qwen's max_window_layers
# (read by transformers only under use_sliding_window, which is refused).
HARMLESS = frozenset({
    "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "auto_map",
    "use_cache", "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "tokenizer_class", "task_specific_params",
    "max_window_layers",
})
# Harmless at this value only (what transformers' defaults give them); any other value changes the model.
NEUTRAL = {"attention_dropout": 0.0, "use_mrope": False}


def check_keys(hf: dict[str, Any], model_type: str, source: str) -> None:
    """Refuse the first key of ``hf`` the decoder does not implement (``None`` values are unset keys)."""
    readable = READ | READ_MINIGPT if model_type == "minigpt" else READ
    for key in sorted(hf):
        value = hf[key]
        if key in readable or key in HARMLESS or value is None:
            continue
        if key in NEUTRAL:
            if value != NEUTRAL[key]:
                raise ConfigError(f"{source}: {key}={value!r} is not supported (only {NEUTRAL[key]!r})")
            continue
        raise ConfigError(f"{source}: key '{key}' is not implemented by the decoder (the model would not be "
                          "the one the config describes); remove it or use a supported model")
