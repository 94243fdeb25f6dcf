"""Run two train steps on each given mesh and dump the losses and updated params (used by tests).

Usage: python sharded_step.py OUT_DIR MODE:DATA,FSDP,TENSOR [...]   (MODE: full or lora)
writes OUT_DIR/MODE-DATAxFSDPxTENSOR.npz for each. All meshes run in this one process (one start-up, one
import of jax); run it with XLA_FLAGS=--xla_force_host_platform_device_count=8 for fake devices.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward, lm_head_weight
from jaxft.models.init import init_params
from jaxft.train import mesh as mesh_lib
from jaxft.train.loss import causal_lm_loss, next_token_targets
from jaxft.train.sharding import tree_shardings
from jaxft.train.step import init_state, jit_step, make_step_fn

jax.config.update("jax_default_matmul_precision", "highest")

CFG = DecoderConfig.from_hf(dict(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 tie_word_embeddings=False))


def _batch():
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, 256, (8, 32)).astype(np.int32), "loss_mask": np.ones((8, 32), np.int32)}
    batch["loss_mask"][:, :4] = 0
    return batch


def _trees(use_lora: bool):
    """(trainable, frozen, params_of): the whole model trained, or LoRA over a frozen base."""
    base = init_params(CFG, jax.random.PRNGKey(0))
    if not use_lora:
        return {"model": base}, {}, lambda t, f: t["model"]
    from jaxft import lora as lora_lib

    adapters = lora_lib.init(jax.random.PRNGKey(1), CFG, base, rank=4, alpha=8)
    # non-zero B so the step is not trivially symmetric
    adapters = lora_lib.LoRA(jax.tree.map(lambda x: x + 0.01, adapters.params), adapters.config)
    return ({"lora": adapters.params}, {"base": base},
            lambda t, f: lora_lib.apply(f["base"], lora_lib.LoRA(t["lora"], adapters.config)))


def run(use_lora: bool, data: int, fsdp: int, tensor: int) -> dict:
    trainable, frozen, params_of = _trees(use_lora)
    batch = _batch()

    def loss_fn(t, f, b, key):
        p = params_of(t, f)
        hidden, _ = forward(CFG, p, b["input_ids"], output="hidden")
        targets, mask = next_token_targets(b["input_ids"], b["loss_mask"])
        out = causal_lm_loss(hidden, lm_head_weight(CFG, p, jnp.float32), targets, mask, chunk_size=64)
        return out.loss_sum, out.weight_sum, {}

    mesh = mesh_lib.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, jax.devices()[: data * fsdp * tensor])
    rules = mesh_lib.DEFAULT_RULES
    # eps bounds Adam's gain on near-zero gradients, where a sum's order (sharded vs not) would otherwise
    # decide a whole step's sign
    optimizer = optax.adamw(1e-2, eps=1e-3)
    t_sh = tree_shardings(trainable, mesh, rules)
    f_sh = tree_shardings(frozen, mesh, rules)
    state = init_state(trainable, optimizer, 0, ema=False)
    s_sh = tree_shardings(jax.eval_shape(lambda: state), mesh, rules)
    s_sh["params"] = t_sh
    state = jax.device_put(state, s_sh)
    frozen = jax.device_put(frozen, f_sh)
    b_sh = {k: mesh_lib.batch_sharding(mesh, rules, v.shape) for k, v in batch.items()}
    step = jit_step(make_step_fn(loss_fn, optimizer), s_sh, f_sh, b_sh)
    losses = []
    for _ in range(2):
        state, metrics = step(state, frozen, jax.device_put(batch, b_sh))
        losses.append(float(metrics["loss"]))
    sharded = [str(x.sharding.spec) for x in jax.tree.leaves(state["params"])]
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    return dict(losses=np.array(losses), n_sharded=sum("fsdp" in s or "tensor" in s for s in sharded), **flat)


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    for spec in sys.argv[2:]:
        mode, shape = spec.split(":")
        data, fsdp, tensor = map(int, shape.split(","))
        np.savez(out_dir / f"{mode}-{data}x{fsdp}x{tensor}.npz", **run(mode == "lora", data, fsdp, tensor))
