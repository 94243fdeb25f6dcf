"""Write a llama-family checkpoint as a GGUF file with the ``gguf`` package's writer.

The inverse of ``jaxft.checkpoint.gguf``: tensors get their GGUF names, the Q/K
projections (weights and biases) take llama.cpp's interleaved row order, matrices
are stored as F32, F16 or Q8_0 (a matrix whose rows do not split into Q8_0 blocks
stays F16, as llama.cpp's converter does), and norms and biases stay F32. The
tokenizer goes in as llama.cpp's ``llama`` (SentencePiece: pieces, scores, types)
when a ``tokenizer.model`` is given, else as ``gpt2`` (byte-level BPE: vocabulary
and merges from the transformers tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxft.checkpoint.gguf import TENSOR_NAMES
from jaxft.checkpoint.hf_names import param_specs
from jaxft.models.config import DecoderConfig

TENSOR_TYPES = ("f32", "f16", "q8_0")
_ARCHITECTURES = ("llama", "mistral")  # the families llama.cpp runs as "llama"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary halves -> llama.cpp's interleaved pairs (inverse of ``gguf.unpermute_qk``)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_to_gguf_names() -> dict[str, str]:
    return {hf: gg for gg, hf in TENSOR_NAMES.items()}


def write_gguf(path: str | Path, cfg: DecoderConfig, params: dict[str, Any], tokenizer=None, *,
               spm_model: str | Path | None = None, tensor_type: str = "f16", name: str = "jaxft") -> Path:
    """Write ``params`` of a Llama-shaped ``cfg`` to ``path``; returns the path."""
    import gguf

    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"--type must be one of {', '.join(TENSOR_TYPES)}, got {tensor_type!r}")
    if cfg.model_type not in _ARCHITECTURES or cfg.parallel_residual or cfg.norm_type != "rms_norm" \
            or cfg.position_embedding != "rope" or cfg.embedding_multiplier != 1.0:
        raise ValueError(f"GGUF export needs a Llama-shaped model (sequential blocks, RMSNorm, RoPE); this one is "
                         f"model_type '{cfg.model_type}'" + (" with the reference block options"
                                                            if cfg.model_type == "minigpt" else ""))
    if cfg.rope_type != "default" or cfg.sliding_window is not None:
        raise ValueError("GGUF export supports default RoPE without a sliding window")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type])
    if tokenizer is not None or spm_model is not None:
        _add_tokenizer(writer, cfg, tokenizer, spm_model)
    for gguf_name, array in _tensors(cfg, params):
        _add_tensor(writer, gguf_name, array, tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensors(cfg: DecoderConfig, params):
    import jax

    names = _hf_to_gguf_names()
    for spec in param_specs(cfg):
        node = params
        for key in spec.path:
            node = node[key]
        value = np.asarray(jax.device_get(node), np.float32)
        template = names[spec.hf_name]  # "blk.{i}.attn_q.weight" for per-layer tensors
        for layer in range(cfg.num_hidden_layers if spec.stacked else 1):
            array = value[layer] if spec.stacked else value
            if spec.transpose:
                array = array.T
            gguf_name = template.format(i=layer)
            if ".attn_q." in gguf_name:
                array = permute_qk(array, cfg.num_attention_heads)
            elif ".attn_k." in gguf_name:
                array = permute_qk(array, cfg.num_key_value_heads)
            yield gguf_name, np.ascontiguousarray(array)


def _add_tensor(writer, name: str, array: np.ndarray, tensor_type: str) -> None:
    import gguf

    if array.ndim == 1 or tensor_type == "f32":
        writer.add_tensor(name, array.astype(np.float32))
        return
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    if tensor_type == "q8_0" and array.shape[-1] % block == 0:
        data = gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # data has the byte shape
        return
    writer.add_tensor(name, array.astype(np.float16))


def _add_tokenizer(writer, cfg: DecoderConfig, tokenizer, spm_model) -> None:
    import gguf

    if spm_model is not None:
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(spm_model).read_bytes())
        tokens = [p.piece for p in proto.pieces]
        scores = [float(p.score) for p in proto.pieces]
        types = [int(p.type) for p in proto.pieces]  # SentencePiece and GGUF number the token types alike
        writer.add_tokenizer_model("llama")
        writer.add_add_space_prefix(bool(proto.normalizer_spec.add_dummy_prefix))
        special = {"bos": proto.trainer_spec.bos_id, "eos": proto.trainer_spec.eos_id,
                   "unk": proto.trainer_spec.unk_id, "pad": proto.trainer_spec.pad_id}
    else:
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        model = backend.get("model", {})
        if model.get("type") != "BPE":
            raise ValueError("GGUF export: the tokenizer is neither a SentencePiece model (tokenizer.model) nor a "
                             f"byte-level BPE (found model type {model.get('type')!r})")
        vocab = tokenizer.get_vocab()
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        specials = set(tokenizer.all_special_ids)
        tokens = [tok for tok, _ in by_id]
        scores = [0.0] * len(tokens)
        types = [int(gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL) for _, i in by_id]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_merges(merges)
        special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
                   "pad": tokenizer.pad_token_id}
    if len(tokens) > cfg.vocab_size:
        raise ValueError(f"GGUF export: the tokenizer has {len(tokens)} tokens, the model {cfg.vocab_size}")
    for i in range(len(tokens), cfg.vocab_size):  # rows of the embedding no token uses
        tokens.append(f"[PAD{i}]")
        scores.append(0.0)
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for key, value in special.items():
        if value is not None and 0 <= int(value) < cfg.vocab_size:
            adders[key](int(value))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
