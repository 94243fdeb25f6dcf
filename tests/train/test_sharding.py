"""Logical-axis rules: decoder leaves get their modules' axes, adapters those of the kernels they adapt."""

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from jaxft import lora
from jaxft.models.config import DecoderConfig
from jaxft.models.init import abstract_params
from jaxft.train.mesh import DEFAULT_RULES, make_mesh, partition_spec
from jaxft.train.sharding import logical_axes_for

CFG = DecoderConfig.from_hf(dict(model_type="qwen3", vocab_size=1024, hidden_size=256, intermediate_size=512,
                                 num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=32))


def _spec(path, shape, mesh):
    return partition_spec(logical_axes_for(path, shape), shape, mesh, DEFAULT_RULES)


@pytest.mark.parametrize("axes", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_lora_factors_shard_like_their_base_kernel(axes):
    mesh = AbstractMesh(axes, ("data", "fsdp", "tensor"))
    params = abstract_params(CFG)
    adapters = jax.eval_shape(lambda: lora.init(jax.random.PRNGKey(0), CFG, abstract_params(CFG), rank=16).params)
    checked = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        names = tuple(k.key for k in path)
        module = names[:-1]
        kernel = params
        for k in module + ("kernel",):
            kernel = kernel[k]
        k_spec = _spec(module + ("kernel",), kernel.shape, mesh)
        spec = _spec(names, leaf.shape, mesh)
        if names[-1] == "a":  # [L, in, r]: the input dim is split like the kernel's input dim
            assert spec[1] == k_spec[1] and spec[2] is None, (names, spec, k_spec)
        else:  # [L, r, out]
            assert spec[2] == k_spec[2] and spec[1] is None, (names, spec, k_spec)
        checked += 1
    assert checked == 14  # 7 targets x (a, b)


def test_rules_only_shard_divisible_dims_and_use_each_mesh_axis_once():
    mesh = AbstractMesh((1, 8, 1), ("data", "fsdp", "tensor"))
    assert partition_spec(("vocab", "embed"), (1000, 256), mesh, DEFAULT_RULES) == PartitionSpec(None, "fsdp")
    assert partition_spec(("embed", "embed"), (256, 256), mesh, DEFAULT_RULES) == PartitionSpec("fsdp", None)
    assert partition_spec(("embed",), (12,), mesh, DEFAULT_RULES) == PartitionSpec(None)


def test_mesh_shape_errors_are_named():
    with pytest.raises(ValueError, match="mesh.shape"):
        make_mesh({"data": 3})
    with pytest.raises(ValueError, match="unknown axes"):
        make_mesh({"model": 1})


FAMILIES = {
    "llama": dict(model_type="llama", attention_bias=True, mlp_bias=True),
    "qwen2_tied": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3"),
    "minigpt": dict(model_type="minigpt"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_decoder_leaf_gets_the_axes_of_its_module_box(family):
    """For each family, a plain parameter tree (under any prefix) is sharded by the axes ``CausalLM.init``
    boxes that very tensor with, and the boxed tree itself is placed by its boxes the same way."""
    from jaxft.models.init import _boxed_shapes, logical_axes
    from jaxft.train.sharding import tree_shardings

    cfg = DecoderConfig.from_hf(dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                     num_attention_heads=8, num_key_value_heads=4, head_dim=32, **FAMILIES[family]))
    mesh = AbstractMesh((1, 2, 4), ("data", "fsdp", "tensor"))
    params, axes = abstract_params(cfg), logical_axes(cfg)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat) == len(flat_axes) > 10
    for (path, leaf), want in zip(flat, flat_axes):
        names = tuple(k.key for k in path)
        assert logical_axes_for(("encoder",) + names, leaf.shape) == want, names
    by_boxes = tree_shardings(_boxed_shapes(cfg), mesh, DEFAULT_RULES)
    by_paths = tree_shardings({"encoder": params}, mesh, DEFAULT_RULES)["encoder"]
    assert jax.tree.map(lambda s: s.spec, by_boxes) == jax.tree.map(lambda s: s.spec, by_paths)
    assert any(s.spec != PartitionSpec(*[None] * len(s.spec)) for s in jax.tree.leaves(by_boxes))
