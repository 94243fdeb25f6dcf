"""GGUF files (llama.cpp) as a ``TensorSource`` with Hugging Face tensor names.

Reading and dequantization are the ``gguf`` package's (``GGUFReader``,
``gguf.quants.dequantize``); this module only renames tensors, restores the
Hugging Face shapes and layouts, and turns the metadata into a
transformers-style config dict (``GGUFSource.hf_config``).

Two layout facts matter:

* llama.cpp's converter permutes the rows of the Q and K projections of
  Llama-architecture models (it wants rotary pairs interleaved, HF keeps them in
  two halves). Reading them back applies the inverse permutation, as
  transformers' own GGUF loader does. Qwen2/Qwen3 files are not permuted.
* Llama 3.x rope scaling is not stored as metadata but as a ``rope_freqs``
  tensor of per-frequency divisors. Those are translated back into
  ``rope_scaling = {"rope_type": "llama3", ...}`` and checked to reproduce the
  tensor exactly, so a file whose factors follow another rule is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxft.checkpoint.sources import CheckpointError

# general.architecture -> transformers model_type.
SUPPORTED_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}
_PERMUTED_QK = ("llama", "mistral")
_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                     "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF tensor name -> Hugging Face tensor name; "{i}" is the block index.
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_output.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_gate.bias": "model.layers.{i}.mlp.gate_proj.bias",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_up.bias": "model.layers.{i}.mlp.up_proj.bias",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "blk.{i}.ffn_down.bias": "model.layers.{i}.mlp.down_proj.bias",
}
_ROPE_FREQS = "rope_freqs.weight"  # consumed into the config, not a parameter

# Tensor types gguf.quants can dequantize (plus the plain float ones).
SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)

_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def gguf_to_hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None if it has no counterpart."""
    match = _BLOCK.fullmatch(gguf_name)
    if match is None:
        return TENSOR_NAMES.get(gguf_name)
    template = TENSOR_NAMES.get("blk.{i}." + match.group(2))
    return template.format(i=int(match.group(1))) if template else None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order (rotary pairs interleaved) -> HF's (two halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource:
    """A ``TensorSource`` over one ``.gguf`` file; ``hf_config`` is its config as a dict."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        path = Path(path)
        self.origin = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        try:
            self._reader = GGUFReader(path)
        except Exception as e:  # a truncated or non-GGUF file: say which one
            raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.architecture = self._string("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(f"{path}: GGUF architecture '{self.architecture}' is not supported "
                                  f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        self._hf_names: dict[str, str] = {}
        for gguf_name, tensor in self._tensors.items():
            if gguf_name == _ROPE_FREQS:
                continue
            hf_name = gguf_to_hf_name(gguf_name)
            if hf_name is not None and tensor.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
                raise CheckpointError(
                    f"{path}: tensor '{gguf_name}' has GGUF type {tensor.tensor_type.name}, which jaxft cannot "
                    f"dequantize (supported: {', '.join(SUPPORTED_TENSOR_TYPES)})")
            # Tensors without an HF counterpart keep their GGUF name, so loaders can report them.
            self._hf_names[hf_name or gguf_name] = gguf_name
        self.hf_config: dict[str, Any] = self._build_hf_config()

    # -- TensorSource -------------------------------------------------------------

    def names(self) -> Iterable[str]:
        return self._hf_names.keys()

    def get(self, name: str) -> np.ndarray:
        """The tensor in HF layout: float32, or float16 when stored as F16."""
        if name not in self._hf_names:
            raise CheckpointError(f"{self.origin}: no tensor '{name}'")
        gguf_name = self._hf_names[name]
        value = self._dequantize(gguf_name)
        if self.architecture in _PERMUTED_QK:
            if ".attn_q." in gguf_name:
                value = unpermute_qk(value, self.hf_config["num_attention_heads"])
            elif ".attn_k." in gguf_name:
                value = unpermute_qk(value, self.hf_config["num_key_value_heads"])
        return value

    def close(self) -> None:
        self._tensors.clear()
        self._reader = None

    # -- reading --------------------------------------------------------------------

    def _dequantize(self, gguf_name: str) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        tensor = self._tensors[gguf_name]
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims innermost first
        # Plain float tensors are views of the memory map: copy them, so nothing outlives close().
        if tensor.tensor_type == GGMLQuantizationType.F16:
            return np.array(tensor.data, dtype=np.float16).reshape(shape)  # the loader casts later
        if tensor.tensor_type == GGMLQuantizationType.F32:
            return np.array(tensor.data, dtype=np.float32).reshape(shape)
        try:
            # A plain ndarray view: slicing the np.memmap subclass costs more than the maths.
            value = dequantize(tensor.data.view(np.ndarray), tensor.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{self.origin}: tensor '{gguf_name}' has GGUF type {tensor.tensor_type.name}, "
                                  "which gguf cannot dequantize") from None
        return np.asarray(value, dtype=np.float32).reshape(shape)

    def _field(self, key: str, default: Any = None) -> Any:
        field = self._reader.get_field(key)
        return default if field is None else field.contents()

    def _string(self, key: str) -> str:
        value = self._field(key)
        if not isinstance(value, str):
            raise CheckpointError(f"{self.origin}: GGUF metadata key '{key}' is missing")
        return value

    def _arch(self, key: str, default: Any = None, required: bool = False) -> Any:
        full = f"{self.architecture}.{key}"
        value = self._field(full, default)
        if required and value is None:
            raise CheckpointError(f"{self.origin}: GGUF metadata key '{full}' is missing")
        return value

    # -- config ---------------------------------------------------------------------

    def _build_hf_config(self) -> dict[str, Any]:
        model_type = SUPPORTED_ARCHITECTURES[self.architecture]
        if "token_embd.weight" not in self._tensors:
            raise CheckpointError(f"{self.origin}: tensor 'token_embd.weight' is missing")
        hidden = int(self._arch("embedding_length", required=True))
        heads = int(self._arch("attention.head_count", required=True))
        kv_heads = int(self._arch("attention.head_count_kv", heads))
        head_dim = int(self._arch("attention.key_length", 0) or hidden // heads)
        rotary_dim = self._arch("rope.dimension_count")
        if rotary_dim is not None and int(rotary_dim) != head_dim:
            raise CheckpointError(f"{self.origin}: partial rotary embeddings ({self.architecture}.rope.dimension_count"
                                  f"={rotary_dim}, head_dim={head_dim}) are not supported")
        theta = _decimal(self._arch("rope.freq_base", 10000.0))
        hf: dict[str, Any] = {
            "model_type": model_type,
            "architectures": [_HF_ARCHITECTURES[model_type]],
            "hidden_act": "silu",
            "vocab_size": int(self._tensors["token_embd.weight"].shape[1]),
            "hidden_size": hidden,
            "intermediate_size": int(self._arch("feed_forward_length", required=True)),
            "num_hidden_layers": int(self._arch("block_count", required=True)),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": _decimal(self._arch("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": theta,
            "max_position_embeddings": int(self._arch("context_length", 4096)),
            "tie_word_embeddings": "output.weight" not in self._tensors,
        }
        rope_scaling = self._rope_scaling(theta, head_dim)
        if rope_scaling:
            hf["rope_scaling"] = rope_scaling
        if model_type != "qwen2":  # Qwen2 always has q/k/v biases; elsewhere the tensors tell.
            hf["attention_bias"] = "blk.0.attn_q.bias" in self._tensors
        if model_type == "llama":
            hf["mlp_bias"] = "blk.0.ffn_up.bias" in self._tensors
        if model_type == "mistral":
            hf["sliding_window"] = None  # GGUF keeps no window; full attention is what llama.cpp runs
        if model_type in ("qwen2", "qwen3"):
            hf["use_sliding_window"] = False
        for key, hf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                            ("padding_token_id", "pad_token_id")):
            value = self._field(f"tokenizer.ggml.{key}")
            if value is not None:
                hf[hf_key] = int(value)
        return hf

    def _rope_scaling(self, theta: float, head_dim: int) -> dict[str, Any] | None:
        kind = self._arch("rope.scaling.type")
        if _ROPE_FREQS in self._tensors:
            if kind not in (None, "none"):
                raise CheckpointError(f"{self.origin}: both rope_freqs and rope scaling '{kind}' are set")
            factors = self._dequantize(_ROPE_FREQS).astype(np.float64).reshape(-1)
            return llama3_rope_from_factors(factors, theta, head_dim, self.origin)
        if kind in (None, "none"):
            return None
        scaling: dict[str, Any] = {"rope_type": kind, "factor": _decimal(self._arch("rope.scaling.factor", 1.0))}
        original = self._arch("rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling  # DecoderConfig names any type it does not implement


def _decimal(value: float) -> float:
    """GGUF stores these floats as float32: 1e-5 reads back as 9.9999997e-06. Take the shortest
    decimal that rounds to the same float32, which is the value the config was written with."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _llama3_divisors(inv_freq: np.ndarray, factor: float, low: float, high: float, original: float) -> np.ndarray:
    """Per-frequency divisors of transformers' "llama3" rope (what rope_freqs stores)."""
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    ramp = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, ramp))


def llama3_rope_from_factors(factors: np.ndarray, theta: float, head_dim: int,
                             origin: str = "GGUF") -> dict[str, Any] | None:
    """Recover ``rope_scaling`` (type "llama3") from llama.cpp's ``rope_freqs`` divisors.

    The divisors only depend on ``original / low_freq_factor`` and
    ``original / high_freq_factor`` (the two wavelength thresholds), so
    ``low_freq_factor`` is fixed at 1 and the thresholds are solved from the
    ramp between them. The result is accepted only if it reproduces every factor.
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if factors.shape != inv_freq.shape:
        raise CheckpointError(f"{origin}: rope_freqs has {factors.size} entries, head_dim {head_dim} "
                              f"implies {inv_freq.size}")
    if np.allclose(factors, 1.0):
        return None
    wavelen = 2 * math.pi / inv_freq
    factor = float(factors.max())
    tol = 1e-5 * factor
    unscaled, ramp = factors <= 1 + tol, (factors > 1 + tol) & (factors < factor - tol)
    # On the ramp, s = (1/f - 1/factor) / (1 - 1/factor) = (A / wavelen - 1) / (A / B - 1), with the
    # thresholds A = original / low and B = original / high.
    s = (1 / factors - 1 / factor) / (1 - 1 / factor)
    if ramp.sum() >= 2:
        slope, intercept = np.polyfit(1 / wavelen[ramp], s[ramp], 1)
        a = -slope / intercept
        b = a / (1 - 1 / intercept)
    elif ramp.any():
        # One ramp point: only the wavelengths present are constrained, so place A between it and
        # the next scaled wavelength and solve B through the point.
        s0, w0 = float(s[ramp][0]), float(wavelen[ramp][0])
        scaled = wavelen[factors >= factor - tol]
        a = math.sqrt(w0 * float(scaled.min())) if scaled.size else 2 * w0
        b = a / ((a / w0 - 1) / s0 + 1)
    else:
        b = float(wavelen[unscaled].max()) if unscaled.any() else float(wavelen.min()) / 2
        a = float(wavelen[~unscaled].min())
    if not (np.isfinite(a) and np.isfinite(b) and a > b > 0):
        raise CheckpointError(f"{origin}: rope_freqs does not follow llama3 rope scaling")
    # Prefer round numbers (Llama 3.x: original 8192, high_freq_factor 4) when they fit as well.
    for original, high in ((round(a), round(a / b, 4)), (a, a / b)):
        rebuilt = _llama3_divisors(inv_freq, factor, 1.0, high, original)
        if np.allclose(rebuilt, factors, rtol=1e-5, atol=0):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                    "high_freq_factor": float(high), "original_max_position_embeddings": original}
    raise CheckpointError(f"{origin}: rope_freqs does not follow llama3 rope scaling "
                          f"(max deviation {np.abs(rebuilt / factors - 1).max():.2e})")
