"""Load and save Hugging Face checkpoints (safetensors, or GGUF files).

Loading streams tensor by tensor: each stacked parameter is assembled in one
host buffer of the target dtype and handed to the device (optionally straight
onto a sharding) before the next one is read, so host memory stays near one
copy of the weights.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxft.checkpoint.hf_names import ParamSpec, param_specs
from jaxft.checkpoint.sources import CheckpointError, SafetensorsSource, TensorSource
from jaxft.models import layers
from jaxft.models.config import DecoderConfig, load_config

log = logging.getLogger(__name__)

# Tensors some checkpoints carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

ShardingFn = Callable[[tuple[str, ...], tuple[int, ...]], jax.sharding.Sharding | None]
# (spec, host tensor) -> the parameter leaf: e.g. the tensor quantized onto its shardings.
PlaceFn = Callable[[ParamSpec, np.ndarray], Any]


HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.jinja")


def resolve(path_or_hub_id: str | Path, revision: str | None = None, extra_patterns: tuple[str, ...] = ()) -> Path:
    """A local directory or .gguf file; a hub id is downloaded through huggingface_hub (the files of
    ``HUB_PATTERNS`` and ``extra_patterns``)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_hub_id)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"checkpoint '{text}' does not exist (and is not a hub id like org/name)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(text, revision=revision, allow_patterns=[*HUB_PATTERNS, *extra_patterns])
    except Exception as e:  # network, auth, unknown repo: say which id failed and why
        raise FileNotFoundError(f"checkpoint '{text}' is not a local path and could not be "
                                f"downloaded from the Hugging Face hub: {type(e).__name__}: {e}") from None
    return Path(local)


def open_checkpoint(path_or_hub_id: str | Path) -> tuple[DecoderConfig, TensorSource]:
    path = resolve(path_or_hub_id)
    if path.is_file() and path.suffix == ".gguf":
        from jaxft.checkpoint.gguf import GGUFSource

        source = GGUFSource(path)
        return DecoderConfig.from_hf(source.hf_config, source=str(path)), source
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory or a .gguf file")
    cfg = load_config(path)
    try:
        return cfg, SafetensorsSource(path)
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None


def _unreadable(directory: Path, err: BaseException) -> CheckpointError:
    """Name the safetensors file of ``directory`` that does not read, and why (safetensors' errors name no file)."""
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="np") as f:
                for name in f.keys():
                    f.get_slice(name)
        except (SafetensorError, OSError) as file_err:
            return CheckpointError(f"{file}: not a readable safetensors file "
                                   f"({' '.join(str(file_err).split()) or type(file_err).__name__})")
    return CheckpointError(f"{directory}: safetensors weights do not read ({' '.join(str(err).split())})")


def _np_dtype(dtype) -> np.dtype:
    return np.dtype(jnp.dtype(dtype))


def _read_param(spec: ParamSpec, cfg: DecoderConfig, source: TensorSource, available: set[str],
                dtype: np.dtype) -> np.ndarray:
    out = np.empty(spec.shape, dtype)
    for i, name in enumerate(spec.hf_names(cfg.num_hidden_layers)):
        if name not in available:
            raise CheckpointError(f"{source.origin}: tensor '{name}' is missing")
        t = source.get(name)
        if tuple(t.shape) != spec.hf_shape:
            raise CheckpointError(f"{source.origin}: tensor '{name}' has shape {tuple(t.shape)}, "
                                  f"the config implies {spec.hf_shape}")
        t = t.T if spec.transpose else t
        if spec.stacked:
            out[i] = t
        else:
            out[...] = t
    return out


def onto(host: np.ndarray, target: jax.sharding.Sharding | None) -> jax.Array:
    """A host tensor on the default device, or straight onto ``target``, each device getting only its shard."""
    if target is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, target, lambda idx: host[idx])


def load_pretrained(path_or_hub_id: str | Path, dtype=jnp.float32, *, sharding: ShardingFn | None = None,
                    place: PlaceFn | None = None) -> tuple[DecoderConfig, dict[str, Any]]:
    """Load a checkpoint into ``(cfg, params)``.

    ``sharding(path, shape)`` may return a ``jax.sharding.Sharding`` for each
    parameter; it is placed there directly, shard by shard. ``place(spec, host)``
    instead makes each parameter's leaf from its host tensor (``jaxft.loaders``
    quantizes kernels onto their shardings this way).
    """
    cfg, source = open_checkpoint(path_or_hub_id)
    np_dtype = _np_dtype(dtype)
    try:
        available = set(source.names())
        params: dict[str, Any] = {}
        used = set()
        for spec in param_specs(cfg):
            try:
                host = _read_param(spec, cfg, source, available, np_dtype)
            except (SafetensorError, OSError) as err:
                if isinstance(source, SafetensorsSource):
                    raise _unreadable(Path(source.origin), err) from None
                raise
            used.update(spec.hf_names(cfg.num_hidden_layers))
            if place is not None:
                value = place(spec, host)
            else:
                value = onto(host, sharding(spec.path, spec.shape) if sharding else None)
            del host
            node = params
            for key in spec.path[:-1]:
                node = node.setdefault(key, {})
            node[spec.path[-1]] = value
        leftover = sorted(n for n in available - used if not n.endswith(_IGNORED_SUFFIXES)
                          and not (n == "lm_head.weight" and cfg.tie_word_embeddings))
        if leftover:
            log.warning("%s: %d tensors not used by %s, e.g. %s", source.origin, len(leftover), cfg.model_type,
                        leftover[:3])
    finally:
        source.close()
    return cfg, params


def _get(params: dict[str, Any], path: tuple[str, ...]):
    node = params
    for key in path:
        if key not in node:
            raise CheckpointError(f"params have no entry '{'/'.join(path)}'")
        node = node[key]
    return node


_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(jnp.bfloat16): "bfloat16", np.dtype(np.float16): "float16"}


def _plan_shards(cfg: DecoderConfig, params: dict[str, Any], max_shard_bytes: int):
    """Assign every HF tensor to a shard file before anything is copied to the host."""
    shards: list[list[tuple[ParamSpec, int | None, str]]] = [[]]
    sizes = [0]
    for spec in param_specs(cfg):
        value = _get(params, spec.path)
        itemsize = np.dtype(value.dtype).itemsize if hasattr(value, "dtype") else 4
        layer_bytes = math.prod(spec.hf_shape) * itemsize
        for i, name in enumerate(spec.hf_names(cfg.num_hidden_layers)):
            if sizes[-1] and sizes[-1] + layer_bytes > max_shard_bytes:
                shards.append([])
                sizes.append(0)
            shards[-1].append((spec, i if spec.stacked else None, name))
            sizes[-1] += layer_bytes
    return shards, sum(sizes)


def _host_tensor(params, spec: ParamSpec, layer: int | None) -> np.ndarray:
    value = _get(params, spec.path)
    if layer is not None:  # every leaf of a wrapped kernel keeps the layer axis first
        value = jax.tree.map(lambda x: x[layer], value)
    if hasattr(value, "materialize"):  # a LoRA-wrapped or quantized kernel: save plain weights
        value = layers.materialize(value, jnp.float32)
    t = np.asarray(jax.device_get(value))
    return np.ascontiguousarray(t.T if spec.transpose else t)


def save_pretrained(path: str | Path, cfg: DecoderConfig, params: dict[str, Any], *,
                    max_shard_bytes: int = 2 * 1024**3, tokenizer=None) -> Path:
    """Write ``config.json`` and safetensors (sharded with an index past ``max_shard_bytes``)
    that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Shards are planned from shapes first and written one at a time, so host memory
    holds at most one shard (not the whole model) on top of the device copy.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    plan, total_bytes = _plan_shards(cfg, params, max_shard_bytes)
    names = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    weight_map, dtype_name = {}, "float32"
    for fname, entries in zip(names, plan):
        shard = {name: _host_tensor(params, spec, layer) for spec, layer, name in entries}
        dtype_name = _DTYPE_NAMES.get(next(iter(shard.values())).dtype, dtype_name)
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
        del shard
    if len(plan) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf = cfg.hf_config
    hf.update(_ARCHITECTURES.get(cfg.model_type, {}))
    hf["dtype"] = dtype_name
    hf["tie_word_embeddings"] = cfg.tie_word_embeddings
    (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


_ARCHITECTURES = {
    "llama": {"architectures": ["LlamaForCausalLM"]},
    "mistral": {"architectures": ["MistralForCausalLM"]},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"]},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"]},
}


def param_bytes(params) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params))
