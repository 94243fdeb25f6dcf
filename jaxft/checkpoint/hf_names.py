"""The Hugging Face name of every decoder parameter, for the tensors ``CausalLM(cfg).init`` declares.

    HF name                                      jaxft path                                 stored as
    model.embed_tokens.weight                    model/embed_tokens/weight                  [vocab, hidden]
    model.layers.{i}.input_layernorm.weight      model/layers/input_layernorm/weight[i]     [L, hidden]
    model.layers.{i}.self_attn.q_proj.weight     model/layers/self_attn/q_proj/kernel[i]    [L, in, out] (transposed)
    model.layers.{i}.self_attn.q_proj.bias       model/layers/self_attn/q_proj/bias[i]      [L, out]
    ... k_proj, v_proj, o_proj, q_norm, k_norm, post_attention_layernorm, mlp.{gate,up,down}_proj alike
    model.norm.weight                            model/norm/weight                          [hidden]
    lm_head.weight                               lm_head/kernel                             [hidden, vocab] (transposed)

Which tensors a config has, their shapes and logical axes come from the module tree
(``jaxft.models.init.param_layout``); this file only names them: ``HF_MODULES`` (module
path -> HF module name, in the order HF checkpoints list them) and ``HF_LEAVES``.
Per-layer tensors are stacked on a leading layer axis (for ``lax.scan``); Linear
weights are transposed to [in, out] kernels. Everything else is copied as is.
"""

from __future__ import annotations

import dataclasses
import functools

from jaxft.models.config import DecoderConfig
from jaxft.models.init import param_layout

# Each decoder module's HF name; ``{i}`` numbers the layers (stacked on axis 0 here).
HF_MODULES: dict[tuple[str, ...], str] = {
    ("model", "embed_tokens"): "model.embed_tokens",
    ("model", "layers", "input_layernorm"): "model.layers.{i}.input_layernorm",
    ("model", "layers", "self_attn", "q_proj"): "model.layers.{i}.self_attn.q_proj",
    ("model", "layers", "self_attn", "k_proj"): "model.layers.{i}.self_attn.k_proj",
    ("model", "layers", "self_attn", "v_proj"): "model.layers.{i}.self_attn.v_proj",
    ("model", "layers", "self_attn", "o_proj"): "model.layers.{i}.self_attn.o_proj",
    ("model", "layers", "self_attn", "q_norm"): "model.layers.{i}.self_attn.q_norm",
    ("model", "layers", "self_attn", "k_norm"): "model.layers.{i}.self_attn.k_norm",
    ("model", "layers", "post_attention_layernorm"): "model.layers.{i}.post_attention_layernorm",
    ("model", "layers", "mlp", "gate_proj"): "model.layers.{i}.mlp.gate_proj",
    ("model", "layers", "mlp", "up_proj"): "model.layers.{i}.mlp.up_proj",
    ("model", "layers", "mlp", "down_proj"): "model.layers.{i}.mlp.down_proj",
    ("model", "norm"): "model.norm",
    ("lm_head",): "lm_head",
}
# jaxft leaf -> (HF leaf, transposed): Linear kernels are [in, out] here, [out, in] in torch.
HF_LEAVES: dict[str, tuple[str, bool]] = {"kernel": ("weight", True), "weight": ("weight", False),
                                          "bias": ("bias", False)}


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


def _spec(path: tuple[str, ...], shape: tuple[int, ...], axes: tuple[str | None, ...]) -> ParamSpec:
    module, leaf = path[:-1], path[-1]
    if module not in HF_MODULES or leaf not in HF_LEAVES:
        raise LookupError(f"decoder parameter {'/'.join(path)} has no Hugging Face name (hf_names.HF_MODULES)")
    hf_leaf, transpose = HF_LEAVES[leaf]
    hf_module = HF_MODULES[module]
    return ParamSpec(path, f"{hf_module}.{hf_leaf}", shape, transpose, "{i}" in hf_module, axes)


@functools.lru_cache(maxsize=64)
def _specs(cfg: DecoderConfig) -> tuple[ParamSpec, ...]:
    modules, leaves = list(HF_MODULES), list(HF_LEAVES)
    specs = [_spec(p.path, p.shape, p.logical_axes) for p in param_layout(cfg).values()]
    return tuple(sorted(specs, key=lambda s: (modules.index(s.path[:-1]), leaves.index(s.path[-1]))))


def param_specs(cfg: DecoderConfig) -> list[ParamSpec]:
    """Every tensor a checkpoint of this config must contain, in load order (HF's)."""
    return list(_specs(cfg))


def spec_by_path(cfg: DecoderConfig) -> dict[tuple[str, ...], ParamSpec]:
    return {s.path: s for s in _specs(cfg)}


NORM_MODULES = frozenset({"input_layernorm", "post_attention_layernorm", "norm", "q_norm", "k_norm"})


def is_norm_bias_or_embedding(path: tuple[str, ...]) -> bool:
    """Whether a decoder parameter path is a norm scale/bias, a bias, or the embedding table: the
    leaves that conventionally get no weight decay. Matches HF module names exactly, not substrings."""
    module = path[-2] if len(path) >= 2 else ""
    return path[-1] == "bias" or module in NORM_MODULES or module == "embed_tokens"
