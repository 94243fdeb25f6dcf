"""Decoder configuration, read from a Hugging Face ``config.json``.

One frozen (hashable) dataclass describes every supported family, so it can be a
static argument of ``jax.jit``. A key of ``config.json`` the decoder neither reads nor knows to be harmless
(``hf_keys``), or a value it does not implement, is rejected by name instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "minigpt")
NORM_TYPES = ("rms_norm", "layer_norm")
POSITION_EMBEDDINGS = ("rope", "sinusoidal")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_ACTIVATIONS = ("silu",)


from jaxft.errors import ConfigError  # noqa: E402 - re-exported: jaxft.models.ConfigError
from jaxft.models.hf_keys import check_keys  # noqa: E402


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # ("llama3", (("factor", 32.0), ...)) -- a tuple so the config stays hashable.
    rope_type: str = "default"
    rope_params: tuple[tuple[str, float], ...] = ()
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2 always, Llama optionally)
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # Block-shape options (the "minigpt" family; Llama-family checkpoints keep the defaults).
    parallel_residual: bool = False  # x + Attn(LN1 x) + MLP(LN2 x) instead of two sequential residuals
    norm_type: str = "rms_norm"  # or "layer_norm" (scale and bias)
    layer_norm_eps: float = 1e-5
    position_embedding: str = "rope"  # or "sinusoidal": fixed sin/cos added to the embeddings
    embedding_multiplier: float = 1.0  # token embeddings are multiplied by this (sqrt(d) for minigpt)
    dropout: float = 0.0  # embedding, attention probabilities, attention output, MLP output (training only)
    # The untouched config.json, so save_pretrained writes back what it read.
    hf_config_json: str = dataclasses.field(default="{}", compare=False, repr=False)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def rope(self) -> dict[str, float]:
        return dict(self.rope_params)

    @property
    def hf_config(self) -> dict[str, Any]:
        return json.loads(self.hf_config_json)

    def num_params(self) -> int:
        h, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        per_layer = attn + 3 * h * f + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + L * per_layer + h

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> DecoderConfig:
        """Validate and translate a Hugging Face config dict."""

        def need(key: str):
            if key not in hf or hf[key] is None:
                raise ConfigError(f"{source}: required key '{key}' is missing")
            return hf[key]

        model_type = need("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type '{model_type}' is not supported "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        check_keys(hf, model_type, source)
        act = hf.get("hidden_act", "silu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(f"{source}: hidden_act '{act}' is not supported (supported: silu)")
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise ConfigError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported")

        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        head_dim = hf.get("head_dim") or hidden // heads
        kv_heads = hf.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise ConfigError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )

        rope_theta, rope_type, rope_params = _read_rope(hf, source)
        sliding_window = _read_sliding_window(hf, model_type, source)

        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        qwen2 = model_type == "qwen2"
        cfg = cls(
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_type=rope_type,
            rope_params=rope_params,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=True if qwen2 else bool(hf.get("attention_bias", False)),
            o_proj_bias=False if qwen2 else bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            hf_config_json=json.dumps(hf, sort_keys=True),
        )
        return cfg.replace(**_read_minigpt(hf, source)) if model_type == "minigpt" else cfg

    def replace(self, **kw) -> DecoderConfig:
        return dataclasses.replace(self, **kw)


def _read_minigpt(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The block-shape keys of a ``minigpt`` config.json (no transformers class reads them)."""
    norm = hf.get("norm_type", "layer_norm")
    if norm not in NORM_TYPES:
        raise ConfigError(f"{source}: norm_type '{norm}' is not one of {', '.join(NORM_TYPES)}")
    positions = hf.get("position_embedding_type", "sinusoidal")
    if positions not in POSITION_EMBEDDINGS:
        raise ConfigError(f"{source}: position_embedding_type '{positions}' is not one of "
                          f"{', '.join(POSITION_EMBEDDINGS)}")
    dropout = float(hf.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{source}: dropout={dropout} must be in [0, 1)")
    return dict(
        parallel_residual=bool(hf.get("parallel_residual", True)),
        norm_type=norm,
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        position_embedding=positions,
        embedding_multiplier=float(hf.get("embedding_multiplier", math.sqrt(hf["hidden_size"]))),
        dropout=dropout,
        # minigpt puts biases on q, k, v and o alike (Llama's attention_bias convention).
        o_proj_bias=bool(hf.get("attention_bias", True)),
        attention_bias=bool(hf.get("attention_bias", True)),
    )


def _read_rope(hf: dict[str, Any], source: str) -> tuple[float, str, tuple[tuple[str, float], ...]]:
    # transformers >= 5 nests everything under rope_parameters; older configs use
    # rope_theta + rope_scaling. Accept both.
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"{source}: per-layer-type rope_parameters are not supported")
    scaling = dict(params or hf.get("rope_scaling") or {})
    theta = float(scaling.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default")) or "default"
    key = "rope_parameters.rope_type" if params else "rope_scaling.rope_type"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: {key} '{rope_type}' is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    numeric = tuple(sorted((k, float(v)) for k, v in scaling.items() if isinstance(v, (int, float))))
    required = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                  "original_max_position_embeddings")}
    for k in required.get(rope_type, ()):
        if k not in dict(numeric):
            raise ConfigError(f"{source}: rope type '{rope_type}' needs '{k}'")
    if "partial_rotary_factor" in hf and hf["partial_rotary_factor"] not in (1, 1.0, None):
        raise ConfigError(f"{source}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")
    return theta, rope_type, numeric


def _read_sliding_window(hf: dict[str, Any], model_type: str, source: str) -> int | None:
    window = hf.get("sliding_window")
    if model_type in ("qwen2", "qwen3"):
        # Qwen configs carry a sliding_window value that is only used when
        # use_sliding_window is set, and then only for some layers.
        if not hf.get("use_sliding_window", False):
            return None
        raise ConfigError(f"{source}: use_sliding_window=true is not supported for {model_type}")
    layer_types = hf.get("layer_types")
    if layer_types and len(set(layer_types)) > 1:
        raise ConfigError(f"{source}: mixed layer_types {sorted(set(layer_types))} are not supported")
    if window is None or (isinstance(window, (int, float)) and math.isinf(window)):
        return None
    return int(window)


def load_config(path: str | Path) -> DecoderConfig:
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    from jaxft.files import read_json

    hf = read_json(file, missing="no config.json found", error=ConfigError)
    return DecoderConfig.from_hf(hf, source=str(file))
