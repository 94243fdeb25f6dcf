"""The Perceiver IO encoder (latents cross-attend to inputs, then self-attend) as flax.linen modules.

It computes what ``transformers.PerceiverModel`` returns as ``last_hidden_state``
when the model has no input preprocessor and no decoder: the inputs are
already vectors of width ``d_model``.

Parameter paths follow the Hugging Face state-dict names, so a PerceiverModel
safetensors checkpoint loads by name: ``encoder.cross_attention.attention.self.query.weight``
is ``params["encoder"]["cross_attention"]["attention"]["self"]["query"]["kernel"]``
(transposed to [in, out]); LayerNorm ``weight`` is ``scale``. The self-attention
layers of the block are stacked on axis 0 and run with ``nn.scan``:
``encoder.self_attends.{i}.X`` is ``params["encoder"]["self_attends"]["layer"][X][i]`` (``layer`` is the
scanned module's own level and has no Hugging Face name).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxft.checkpoint.sources import CheckpointError, SafetensorsSource
from jaxft.models import layers

Params = dict[str, Any]

# transformers builds every Perceiver LayerNorm with torch's default eps, not config.layer_norm_eps.
_LAYER_NORM_EPS = 1e-5
_INIT_STD = 0.02  # transformers' initializer_range default
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
# Keys of a transformers PerceiverConfig that shape the encoder; the rest (image/audio sizes) do not.
_HF_KEYS = ("num_latents", "d_latents", "d_model", "num_blocks", "num_self_attends_per_block",
            "num_self_attention_heads", "num_cross_attention_heads", "qk_channels", "v_channels",
            "cross_attention_shape_for_attention", "self_attention_widening_factor",
            "cross_attention_widening_factor", "hidden_act", "attention_probs_dropout_prob", "use_query_residual")


@dataclasses.dataclass(frozen=True)
class PerceiverEncoderConfig:
    """The encoder's shape, with transformers' PerceiverConfig key names and defaults."""

    num_latents: int = 256
    d_latents: int = 1280
    d_model: int = 768
    num_blocks: int = 1
    num_self_attends_per_block: int = 26
    num_self_attention_heads: int = 8
    num_cross_attention_heads: int = 8
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attention_shape_for_attention: str = "kv"
    self_attention_widening_factor: int = 1
    cross_attention_widening_factor: int = 1
    hidden_act: str = "gelu"
    attention_probs_dropout_prob: float = 0.1
    use_query_residual: bool = True

    def __post_init__(self):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"perceiver: hidden_act '{self.hidden_act}' is not supported "
                             f"(supported: {', '.join(sorted(_ACTIVATIONS))})")
        if self.cross_attention_shape_for_attention not in ("q", "kv"):
            raise ValueError(f"perceiver: cross_attention_shape_for_attention "
                             f"'{self.cross_attention_shape_for_attention}' is not 'q' or 'kv'")
        for name, heads in (("cross", self.num_cross_attention_heads), ("self", self.num_self_attention_heads)):
            qk, v = self.channels(name == "cross")
            if qk % heads or v % heads:
                raise ValueError(f"perceiver: {name}-attention channels (qk {qk}, v {v}) are not divisible by "
                                 f"its {heads} heads")
        if self.channels(False)[1] != self.d_latents:
            raise ValueError(f"perceiver: self-attention v_channels {self.v_channels} must equal d_latents "
                             f"{self.d_latents} (the residual adds them)")

    def channels(self, cross: bool) -> tuple[int, int]:
        """(qk_channels, v_channels) of the cross- or self-attention, resolved as transformers does."""
        if cross:
            qk = self.qk_channels
            if qk is None:
                qk = self.d_model if self.cross_attention_shape_for_attention == "kv" else self.d_latents
        else:
            qk = self.qk_channels if self.qk_channels is not None else self.d_latents
        return qk, self.v_channels if self.v_channels is not None else qk

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config") -> PerceiverEncoderConfig:
        if hf.get("model_type", "perceiver") != "perceiver":
            raise ValueError(f"{source}: model_type '{hf.get('model_type')}' is not 'perceiver'")
        return cls(**{k: hf[k] for k in _HF_KEYS if k in hf})

    def to_hf(self) -> dict[str, Any]:
        return {"model_type": "perceiver", **dataclasses.asdict(self)}


class Linear(nn.Module):
    """x·kernel + bias through ``layers.matmul`` (float32 accumulation; bf16-fast on CPU)."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(_INIT_STD), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return layers.dense(x, kernel, bias)


class LayerNorm(nn.Module):
    """LayerNorm in float32 maths, cast back to the input dtype."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return layers.layer_norm(x, scale, bias, _LAYER_NORM_EPS)


class PerceiverSelfAttention(nn.Module):
    """Multi-head QKV attention; with ``inputs`` the keys/values come from them (cross-attention)."""

    config: PerceiverEncoderConfig
    cross: bool

    @nn.compact
    def __call__(self, hidden, inputs=None, inputs_mask=None, deterministic: bool = True):
        cfg = self.config
        heads = cfg.num_cross_attention_heads if self.cross else cfg.num_self_attention_heads
        qk_channels, v_channels = cfg.channels(self.cross)
        hidden = LayerNorm(name="layernorm1")(hidden)
        kv = LayerNorm(name="layernorm2")(inputs) if self.cross else hidden
        q = Linear(qk_channels, name="query")(hidden)
        k = Linear(qk_channels, name="key")(kv)
        v = Linear(v_channels, name="value")(kv)
        b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(b, tq, heads, qk_channels // heads)
        k = k.reshape(b, tk, heads, qk_channels // heads)
        v = v.reshape(b, tk, heads, v_channels // heads)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / np.sqrt(qk_channels // heads)
        if inputs_mask is not None:
            # transformers adds the dtype minimum; a fully padded row then averages all inputs, as here.
            scores = jnp.where(inputs_mask.astype(bool)[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return out.astype(v.dtype).reshape(b, tq, v_channels)


class PerceiverAttention(nn.Module):
    config: PerceiverEncoderConfig
    cross: bool

    @nn.compact
    def __call__(self, hidden, inputs=None, inputs_mask=None, deterministic: bool = True):
        cfg = self.config
        out = PerceiverSelfAttention(cfg, self.cross, name="self")(hidden, inputs, inputs_mask, deterministic)
        out = _SelfOutput(cfg.d_latents if self.cross else cfg.channels(False)[1], name="output")(out)
        use_residual = cfg.use_query_residual if self.cross else True
        return out + hidden if use_residual else out


class _SelfOutput(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return Linear(self.features, name="dense")(x)


class PerceiverMLP(nn.Module):
    config: PerceiverEncoderConfig
    widening_factor: int

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = Linear(self.widening_factor * width, name="dense1")(x)
        return Linear(width, name="dense2")(_ACTIVATIONS[self.config.hidden_act](h))


class PerceiverLayer(nn.Module):
    """Attention (with its query residual), then LayerNorm → MLP with a residual."""

    config: PerceiverEncoderConfig
    cross: bool

    @nn.compact
    def __call__(self, hidden, inputs=None, inputs_mask=None, deterministic: bool = True):
        cfg = self.config
        h = PerceiverAttention(cfg, self.cross, name="attention")(hidden, inputs, inputs_mask, deterministic)
        widening = cfg.cross_attention_widening_factor if self.cross else cfg.self_attention_widening_factor
        return h + PerceiverMLP(cfg, widening, name="mlp")(LayerNorm(name="layernorm")(h))


class _ScannedSelfLayer(nn.Module):
    config: PerceiverEncoderConfig

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        return PerceiverLayer(self.config, cross=False, name="layer")(hidden, deterministic=deterministic), None


class PerceiverEncoder(nn.Module):
    config: PerceiverEncoderConfig

    @nn.compact
    def __call__(self, latents, inputs, inputs_mask=None, deterministic: bool = True):
        cfg = self.config
        hidden = PerceiverLayer(cfg, cross=True, name="cross_attention")(latents, inputs, inputs_mask, deterministic)
        block = nn.scan(_ScannedSelfLayer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=cfg.num_self_attends_per_block)(cfg, name="self_attends")
        for _ in range(cfg.num_blocks):  # the same block, applied num_blocks times
            hidden, _ = block(hidden, deterministic)
        return hidden


class PerceiverModel(nn.Module):
    """``inputs`` [B, T, d_model] (+ ``attention_mask`` [B, T], 1 = real) -> latents [B, num_latents, d_latents]."""

    config: PerceiverEncoderConfig

    @nn.compact
    def __call__(self, inputs, attention_mask=None, deterministic: bool = True):
        cfg = self.config
        if inputs.shape[-1] != cfg.d_model:
            raise ValueError(f"perceiver: inputs have width {inputs.shape[-1]}, d_model is {cfg.d_model}")
        latents = _Embeddings(cfg, name="embeddings")()
        latents = jnp.broadcast_to(latents.astype(inputs.dtype), (inputs.shape[0],) + latents.shape)
        return PerceiverEncoder(cfg, name="encoder")(latents, inputs, attention_mask, deterministic)


class _Embeddings(nn.Module):
    config: PerceiverEncoderConfig

    @nn.compact
    def __call__(self):
        return self.param("latents", nn.initializers.normal(_INIT_STD),
                          (self.config.num_latents, self.config.d_latents), jnp.float32)


def init_perceiver(rng: jax.Array, cfg: PerceiverEncoderConfig) -> Params:
    """Random parameters as transformers initialises them (normal 0.02, zero biases, unit LayerNorms)."""
    dummy = jnp.zeros((1, 1, cfg.d_model), jnp.float32)
    return PerceiverModel(cfg).init(rng, dummy)["params"]


# --- Hugging Face names ------------------------------------------------------------------------------------

_STACKED = "self_attends"


def _hf_leaf(name: str) -> tuple[str, bool]:
    """Flax leaf name -> (HF leaf name, transpose)."""
    if name == "kernel":
        return "weight", True
    if name == "scale":
        return "weight", False
    return name, False


def _flat(tree: Params, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out.extend(_flat(value, path + (key,)))
        else:
            out.append((path + (key,), value))
    return out


def _hf_names(path: tuple[str, ...], num_layers: int) -> list[str]:
    """The HF names a flax leaf holds: one, or one per stacked self-attention layer."""
    *parents, leaf = path
    parents = [p for p in parents if p != "layer"]  # the scan wrapper's own level has no HF name
    leaf, _ = _hf_leaf(leaf)
    if _STACKED in parents:
        i = parents.index(_STACKED)
        return [".".join(parents[:i + 1] + [str(n)] + parents[i + 1:] + [leaf]) for n in range(num_layers)]
    return [".".join(parents + [leaf])]


def to_hf_state(cfg: PerceiverEncoderConfig, params: Params, prefix: str = "") -> dict[str, np.ndarray]:
    """The transformers PerceiverModel state dict (float32 numpy) of ``params``."""
    out = {}
    for path, value in _flat(params):
        value = np.asarray(jax.device_get(value), np.float32)
        _, transpose = _hf_leaf(path[-1])
        names = _hf_names(path, cfg.num_self_attends_per_block)
        stacked = len(names) > 1 or _STACKED in path
        for i, name in enumerate(names):
            t = value[i] if stacked else value
            out[prefix + name] = np.ascontiguousarray(t.T if transpose else t)
    return out


def from_hf_state(cfg: PerceiverEncoderConfig, tensors, origin: str, prefix: str = "",
                  dtype=jnp.float32) -> Params:
    """Parameters for ``cfg`` read by name from ``tensors`` (name -> array, e.g. a safetensors source).

    Shapes come from a random init of ``cfg``; a missing or mis-shaped tensor is an error naming it.
    """
    template = jax.eval_shape(lambda: init_perceiver(jax.random.PRNGKey(0), cfg))
    out: Params = {}
    for path, spec in _flat(template):
        _, transpose = _hf_leaf(path[-1])
        names = _hf_names(path, cfg.num_self_attends_per_block)
        stacked = _STACKED in path
        want = spec.shape[1:] if stacked else spec.shape
        hf_want = tuple(reversed(want)) if transpose else tuple(want)
        parts = []
        for name in names:
            if prefix + name not in tensors:
                raise CheckpointError(f"{origin}: tensor '{prefix + name}' is missing")
            t = np.asarray(tensors[prefix + name])
            if tuple(t.shape) != hf_want:
                raise CheckpointError(f"{origin}: tensor '{prefix + name}' has shape {tuple(t.shape)}, "
                                      f"the config implies {hf_want}")
            parts.append(t.T if transpose else t)
        value = np.stack(parts) if stacked else parts[0]
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value, dtype)
    return out


class _LazyTensors:
    """A mapping view of a safetensors source (reads a tensor only when asked)."""

    def __init__(self, source: SafetensorsSource):
        self._source, self._names = source, set(source.names())

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __getitem__(self, name: str) -> np.ndarray:
        return self._source.get(name)


TORCH_WEIGHTS = "pytorch_model.bin"  # what deepmind/multimodal-perceiver publishes (no safetensors)


def torch_load(file: Path, without_torch: str = "reading it needs torch (pip install torch)") -> Any:
    """What a torch file holds, read with ``torch.load(weights_only=True)`` (tensors and plain containers only:
    no code in the file runs). torch is optional: without it, one error ending in ``without_torch``."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{file}: a PyTorch weights file; {without_torch}") from None
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated file, pickled code refused by weights_only: named alike
        raise CheckpointError(f"{file}: not a readable torch state dict ({type(e).__name__}: {e})") from None


def state_arrays(state: dict) -> dict[str, np.ndarray]:
    """A torch state dict's tensors as float32 numpy arrays."""
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_torch_state(file: Path) -> dict[str, np.ndarray]:
    """A torch state dict file (a Perceiver's ``pytorch_model.bin``) as float32 numpy arrays."""
    state = torch_load(file, f"reading it needs torch (pip install torch), or convert it once where torch is "
                             f"installed: python -m jaxft.recipes.embedllm convert-perceiver --checkpoint "
                             f"{file.parent} --out DIR")
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a state dict, got {type(state).__name__}")
    return state_arrays(state)


def load_perceiver(directory: str | Path, dtype=jnp.float32) -> tuple[PerceiverEncoderConfig, Params]:
    """A transformers Perceiver checkpoint (``config.json`` + safetensors, or ``pytorch_model.bin``) ->
    (config, params).

    Takes a ``PerceiverModel`` checkpoint or one of a ``PerceiverFor*`` model (names under
    ``perceiver.``); its preprocessor/decoder tensors are not part of the encoder and are ignored.
    """
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not found; is {directory} a Perceiver checkpoint?")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
    cfg = PerceiverEncoderConfig.from_hf(hf, str(config_file))
    if not any(directory.glob("*.safetensors")) and (directory / TORCH_WEIGHTS).is_file():
        tensors = read_torch_state(directory / TORCH_WEIGHTS)
        prefix = "" if "embeddings.latents" in tensors else "perceiver."
        return cfg, from_hf_state(cfg, tensors, str(directory / TORCH_WEIGHTS), prefix=prefix, dtype=dtype)
    source = SafetensorsSource(directory)
    try:
        tensors = _LazyTensors(source)
        prefix = "" if "embeddings.latents" in tensors else "perceiver."
        return cfg, from_hf_state(cfg, tensors, str(directory), prefix=prefix, dtype=dtype)
    finally:
        source.close()


def save_perceiver(directory: str | Path, cfg: PerceiverEncoderConfig, params: Params) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers.PerceiverModel`` loads."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(
        {**cfg.to_hf(), "architectures": ["PerceiverModel"]}, indent=2, sort_keys=True))
    save_file(to_hf_state(cfg, params), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
