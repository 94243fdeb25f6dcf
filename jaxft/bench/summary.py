"""``python -m jaxft.bench.summary --model PATH_OR_PRESET``: the decoder's module tree.

One row per parameter: module path, module class, parameter, shape, dtype, logical
axes and element count, then the total. Shapes come from ``jax.eval_shape`` of
``CausalLM.init``, so a 7B model is summarised without allocating it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxft.bench import shapes
from jaxft.checkpoint.hf import open_checkpoint
from jaxft.errors import cli_boundary
from jaxft.models.config import DecoderConfig
from jaxft.models.modules import CausalLM


@dataclasses.dataclass(frozen=True)
class Row:
    module: str  # "model/layers/self_attn/q_proj"
    kind: str  # the module class, "Dense"
    name: str  # "kernel"
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[str | None, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _module_classes(cfg: DecoderConfig) -> dict[str, str]:
    """Path -> module class name, from a one-layer copy of the config at toy width (same tree, tiny arrays)."""
    toy = cfg.replace(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=8)
    paths = CausalLM(toy).module_paths(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return {path: type(module).__name__ for path, module in paths.items()}


def rows(cfg: DecoderConfig, dtype: str = "float32") -> list[Row]:
    boxed = jax.eval_shape(lambda: CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    classes = _module_classes(cfg)
    flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    out = []
    for path, box in flat:
        names = tuple(k.key for k in path)
        module = "/".join(names[:-1])
        out.append(Row(module, classes.get(module, "?"), names[-1], tuple(box.value.shape), dtype,
                       tuple(box.names)))
    order = {path: i for i, path in enumerate(classes)}  # the order the modules run in
    return sorted(out, key=lambda r: order.get(r.module, len(order)))


def render(cfg: DecoderConfig, table: list[Row]) -> str:
    header = ("module", "class", "param", "shape", "dtype", "logical axes", "params")
    lines = [header] + [(r.module, r.kind, r.name, "[" + ", ".join(map(str, r.shape)) + "]", r.dtype,
                         "(" + ", ".join(str(a) for a in r.axes) + ")", f"{r.size:,}") for r in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.rjust(w) if i == len(line) - 1 else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    total = sum(r.size for r in table)
    nbytes = sum(r.size * jnp.dtype(r.dtype).itemsize for r in table)
    title = (f"{cfg.model_type}: {cfg.num_hidden_layers} layers (stacked on axis 0 under nn.scan), "
             f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")
    body = [fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]]
    return "\n".join([title] + body + [f"total: {total:,} parameters, {nbytes / 2**20:,.1f} MiB"])


def resolve_config(model: str) -> DecoderConfig:
    """A preset name of ``jaxft.bench.shapes`` or a checkpoint directory / GGUF file / hub id."""
    if model in shapes.MODELS:
        return DecoderConfig.from_hf(shapes.hf_config(model), source=f"preset '{model}'")
    cfg, source = open_checkpoint(model)
    source.close()
    return cfg


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxft.bench.summary", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help=f"checkpoint directory, .gguf file, or a preset ({', '.join(shapes.MODELS)})")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the dtype the parameters are loaded in (load_pretrained's dtype)")
    args = p.parse_args(argv)
    cfg = resolve_config(args.model)
    print(render(cfg, rows(cfg, args.dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
