"""The one table that maps Hugging Face tensor names to jaxft parameter paths.

    HF name                                      jaxft path                                 stored as
    model.embed_tokens.weight                    model/embed_tokens/weight                  [vocab, hidden]
    model.layers.{i}.input_layernorm.weight      model/layers/input_layernorm/weight[i]     [L, hidden]
    model.layers.{i}.self_attn.q_proj.weight     model/layers/self_attn/q_proj/kernel[i]    [L, in, out] (transposed)
    model.layers.{i}.self_attn.q_proj.bias       model/layers/self_attn/q_proj/bias[i]      [L, out]
    ... k_proj, v_proj, o_proj, q_norm, k_norm, post_attention_layernorm, mlp.{gate,up,down}_proj alike
    model.norm.weight                            model/norm/weight                          [hidden]
    lm_head.weight                               lm_head/kernel                             [hidden, vocab] (transposed)

Per-layer tensors are stacked on a leading layer axis (for ``lax.scan``); Linear
weights are transposed to [in, out] kernels. Everything else is copied as is.
"""

from __future__ import annotations

import dataclasses

from jaxft.models.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    path: tuple[str, ...]
    hf_name: str  # with "{i}" for per-layer tensors
    shape: tuple[int, ...]  # jaxft shape, layer axis first when stacked
    transpose: bool  # HF [out, in] -> jaxft [in, out]
    stacked: bool
    logical_axes: tuple[str | None, ...]  # names used by the sharding rules

    def hf_names(self, num_layers: int) -> list[str]:
        return [self.hf_name.format(i=i) for i in range(num_layers)] if self.stacked else [self.hf_name]

    @property
    def hf_shape(self) -> tuple[int, ...]:
        shape = self.shape[1:] if self.stacked else self.shape
        return tuple(reversed(shape)) if self.transpose else shape


def _linear(name: str, hf: str, d_in: int, d_out: int, ax_in: str, ax_out: str, bias: bool) -> list[ParamSpec]:
    specs = [ParamSpec(("model", "layers") + tuple(name.split(".")) + ("kernel",),
                       f"model.layers.{{i}}.{hf}.weight", (0, d_in, d_out), True, True,
                       ("layers", ax_in, ax_out))]
    if bias:
        specs.append(ParamSpec(("model", "layers") + tuple(name.split(".")) + ("bias",),
                               f"model.layers.{{i}}.{hf}.bias", (0, d_out), False, True, ("layers", ax_out)))
    return specs


def param_specs(cfg: DecoderConfig) -> list[ParamSpec]:
    """Every tensor a checkpoint of this config must contain, in load order."""
    L, h, f = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    specs = [ParamSpec(("model", "embed_tokens", "weight"), "model.embed_tokens.weight",
                       (cfg.vocab_size, h), False, False, ("vocab", "embed"))]
    norm = lambda name: ParamSpec(("model", "layers", name, "weight"), f"model.layers.{{i}}.{name}.weight",
                                  (0, h), False, True, ("layers", "norm"))
    layer_norm = cfg.norm_type == "layer_norm"  # LayerNorm also has a bias beside its weight
    norm_bias = lambda name: ParamSpec(("model", "layers", name, "bias"), f"model.layers.{{i}}.{name}.bias",
                                       (0, h), False, True, ("layers", "norm"))
    specs.append(norm("input_layernorm"))
    if layer_norm:
        specs.append(norm_bias("input_layernorm"))
    specs += _linear("self_attn.q_proj", "self_attn.q_proj", h, cfg.q_size, "embed", "heads", cfg.attention_bias)
    specs += _linear("self_attn.k_proj", "self_attn.k_proj", h, cfg.kv_size, "embed", "kv_heads", cfg.attention_bias)
    specs += _linear("self_attn.v_proj", "self_attn.v_proj", h, cfg.kv_size, "embed", "kv_heads", cfg.attention_bias)
    specs += _linear("self_attn.o_proj", "self_attn.o_proj", cfg.q_size, h, "heads", "embed", cfg.o_proj_bias)
    if cfg.qk_norm:
        for n in ("q_norm", "k_norm"):
            specs.append(ParamSpec(("model", "layers", "self_attn", n, "weight"),
                                   f"model.layers.{{i}}.self_attn.{n}.weight", (0, cfg.head_dim), False, True,
                                   ("layers", "norm")))
    specs.append(norm("post_attention_layernorm"))
    if layer_norm:
        specs.append(norm_bias("post_attention_layernorm"))
    specs += _linear("mlp.gate_proj", "mlp.gate_proj", h, f, "embed", "mlp", cfg.mlp_bias)
    specs += _linear("mlp.up_proj", "mlp.up_proj", h, f, "embed", "mlp", cfg.mlp_bias)
    specs += _linear("mlp.down_proj", "mlp.down_proj", f, h, "mlp", "embed", cfg.mlp_bias)
    specs.append(ParamSpec(("model", "norm", "weight"), "model.norm.weight", (h,), False, False, ("norm",)))
    if layer_norm:
        specs.append(ParamSpec(("model", "norm", "bias"), "model.norm.bias", (h,), False, False, ("norm",)))
    if not cfg.tie_word_embeddings:
        specs.append(ParamSpec(("lm_head", "kernel"), "lm_head.weight", (h, cfg.vocab_size), True, False,
                               ("embed", "vocab")))
    return [dataclasses.replace(s, shape=(L,) + s.shape[1:]) if s.stacked else s for s in specs]


def spec_by_path(cfg: DecoderConfig) -> dict[tuple[str, ...], ParamSpec]:
    return {s.path: s for s in param_specs(cfg)}


NORM_MODULES = frozenset({"input_layernorm", "post_attention_layernorm", "norm", "q_norm", "k_norm"})


def is_norm_bias_or_embedding(path: tuple[str, ...]) -> bool:
    """Whether a decoder parameter path is a norm scale/bias, a bias, or the embedding table: the
    leaves that conventionally get no weight decay. Matches HF module names exactly, not substrings."""
    module = path[-2] if len(path) >= 2 else ""
    return path[-1] == "bias" or module in NORM_MODULES or module == "embed_tokens"
