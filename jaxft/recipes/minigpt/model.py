"""The minigpt architecture as a config of jaxft's one decoder.

The reference block is ``x + Attn(LN1 x) + SwiGLU(LN2 x)`` with LayerNorms that
have biases, biases on q/k/v/o, a bias-free SwiGLU of width int(8d/3), token
embeddings scaled by sqrt(d) plus fixed sin/cos positions, and a tied head. The
``llama`` shape (sequential residual, RMSNorm, RoPE, no embedding scale) is a
plain Llama config that transformers loads as ``LlamaForCausalLM``.
"""

from __future__ import annotations

import math
from typing import Any

SHAPES = ("reference", "llama")


def swiglu_width(hidden: int) -> int:
    # The reference computes int((2/3) * 4 * d); int(8 * d / 3) avoids the float rounding of 2/3.
    return (8 * hidden) // 3


def hf_config(*, vocab_size: int, hidden_size: int = 384, num_layers: int = 6, num_heads: int = 6,
              num_kv_heads: int | None = None, context: int = 256, dropout: float = 0.1,
              shape: str = "reference", parallel_residual: bool | None = None, norm_type: str | None = None,
              position_embedding: str | None = None, bos_token_id: int | None = None,
              eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """A config.json dict for ``DecoderConfig.from_hf`` (and, for ``shape="llama"``, for transformers).

    ``shape="reference"`` defaults to the reference block; its three switches
    (``parallel_residual``, ``norm_type``, ``position_embedding``) may be set one by one.
    """
    if shape not in SHAPES:
        raise ValueError(f"minigpt.shape '{shape}' is not one of {', '.join(SHAPES)}")
    if hidden_size % num_heads:
        raise ValueError(f"minigpt: hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=swiglu_width(hidden_size),
                  num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=context,
                  hidden_act="silu", attention_bias=True, mlp_bias=False, tie_word_embeddings=True,
                  bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if shape == "llama":
        if (parallel_residual, norm_type, position_embedding) not in ((None, None, None), (False, "rms_norm", "rope")):
            raise ValueError("minigpt.shape 'llama' is sequential, RMSNorm and RoPE; use shape 'reference' "
                             "to choose block options")
        return dict(common, model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, attention_dropout=0.0)
    return dict(common, model_type="minigpt",
                parallel_residual=True if parallel_residual is None else bool(parallel_residual),
                norm_type=norm_type or "layer_norm", layer_norm_eps=1e-5, rms_norm_eps=1e-5,
                position_embedding_type=position_embedding or "sinusoidal", rope_theta=10000.0,
                embedding_multiplier=math.sqrt(hidden_size), dropout=float(dropout))
