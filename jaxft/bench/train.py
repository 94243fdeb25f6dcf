"""``train``: the real jaxft train step (LoRA or full) on random weights and tokens.

The step is exactly what the lm recipe runs: ``lora.apply`` over a frozen base,
``forward(..., output="hidden")``, the chunked ``causal_lm_loss``, and
``make_step_fn`` + ``jit_step`` with AdamW over the trainable tree, on a mesh
over all local devices.
"""

from __future__ import annotations

import time
from typing import Any

from jaxft.bench import system
from jaxft.bench.system import MiB
from jaxft.lora.adapters import DEFAULT_TARGETS



def lm_task(cfg, base, *, lora_rank: int, compute, remat: str, chunk: int, seed: int = 0):
    """(trainable, frozen, loss_fn) of the lm recipe; ``base`` may be arrays or ShapeDtypeStructs."""
    import jax

    from jaxft import lora as lora_lib
    from jaxft.train.lm import LM, loss_only_sums

    if lora_rank:
        # Adapters stay float32 (the optimizer's master copy), like PEFT's autocast_adapter_dtype.
        make = lambda: lora_lib.init(jax.random.key(seed + 1), cfg, base, rank=lora_rank, alpha=2.0 * lora_rank,
                                     targets=DEFAULT_TARGETS)
        abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(base))
        adapters = jax.eval_shape(make) if abstract else make()
        trainable, frozen, lcfg = {"lora": adapters.params}, {"base": base}, adapters.config
    else:
        trainable, frozen, lcfg = {"model": base}, {}, None
    lm = LM(cfg, lora_lib.Finetune(lcfg), dtype=compute, remat=remat, chunk_size=chunk or None)
    loss_fn = lm.loss_fn(loss_only_sums)
    return trainable, frozen, loss_fn


def place_step(trainable, frozen, loss_fn, batch_shapes: dict, mesh, lr: float = 1e-4, seed: int = 0):
    """(jitted step, state shardings, frozen shardings, batch shardings, abstract state) on ``mesh``."""
    import jax
    import optax

    from jaxft.train import mesh as mesh_lib
    from jaxft.train.sharding import tree_shardings
    from jaxft.train.step import init_state, jit_step, make_step_fn

    rules = mesh_lib.DEFAULT_RULES
    optimizer = optax.adamw(lr)
    abstract_state = jax.eval_shape(lambda t: init_state(t, optimizer, seed, ema=False), trainable)
    s_sh = tree_shardings(abstract_state, mesh, rules)
    s_sh["params"] = tree_shardings(trainable, mesh, rules)
    f_sh = tree_shardings(frozen, mesh, rules)
    b_sh = {k: mesh_lib.batch_sharding(mesh, rules, shape) for k, (shape, _) in batch_shapes.items()}
    step = jit_step(make_step_fn(loss_fn, optimizer), s_sh, f_sh, b_sh)
    return step, s_sh, f_sh, b_sh, optimizer


def build_step(cfg, *, batch: int, seq: int, dtype: str, lora_rank: int, remat: str, chunk: int, seed: int = 0):
    """(jitted step, state, frozen, batch), all placed on a mesh over the local devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxft.models.init import init_params
    from jaxft.train import mesh as mesh_lib
    from jaxft.train.step import init_state

    compute = jnp.dtype(dtype)
    # A frozen LoRA base is stored in the compute dtype (as PEFT's torch_dtype); fully trained
    # weights keep float32 master copies and are cast to the compute dtype in the matmuls.
    base = init_params(cfg, jax.random.key(seed), compute if lora_rank else jnp.float32)
    trainable, frozen, loss_fn = lm_task(cfg, base, lora_rank=lora_rank, compute=compute, remat=remat,
                                         chunk=chunk, seed=seed)
    rng = np.random.default_rng(seed)
    host_batch = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32),
                  "attention_mask": np.ones((batch, seq), np.int32), "loss_mask": np.ones((batch, seq), np.int32)}
    mesh = mesh_lib.make_mesh({"fsdp": -1})
    shapes = {k: (v.shape, v.dtype) for k, v in host_batch.items()}
    step, s_sh, f_sh, b_sh, optimizer = place_step(trainable, frozen, loss_fn, shapes, mesh, seed=seed)
    state = jax.device_put(init_state(trainable, optimizer, seed, ema=False), s_sh)
    return step, state, jax.device_put(frozen, f_sh), jax.device_put(host_batch, b_sh)


def run(cfg, *, batch: int, seq: int, dtype: str, lora_rank: int, remat: str, chunk: int, steps: int,
        warmup: int, peak_gflops: float | None) -> dict[str, Any]:
    """Build, compile and time the step in this process; the caller owns peak-RSS tracking."""
    import jax

    step, state, frozen, dev_batch = build_step(cfg, batch=batch, seq=seq, dtype=dtype, lora_rank=lora_rank,
                                                remat=remat, chunk=chunk)
    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, dev_batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax returned one dict per program

    times, losses = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        state, metrics = compiled(state, frozen, dev_batch)
        losses.append(float(jax.block_until_ready(metrics["loss"])))
        if i >= warmup:
            times.append(time.perf_counter() - t)

    dims = system.Dims.of(cfg)
    flops = system.train_flops(dims, batch, seq, lora_rank, DEFAULT_TARGETS)
    step_s = system.median(times)
    trainable = dims.lora_params(lora_rank, DEFAULT_TARGETS) if lora_rank else cfg.num_params()
    out = {
        "tokens_per_s": batch * seq / step_s,
        "step_s_median": step_s,
        "step_s": times,
        "compile_s": compile_s,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "model_flops_per_step": flops["total"],
        "model_flops_breakdown": flops,
        "xla_flops_per_step": float(cost.get("flops", 0.0)) if cost else None,
        "flop_formula": system.train_flops_formula(lora_rank),
        "n_params": cfg.num_params(),
        "n_trainable": trainable,
        "device_peak_mib": _mib(system.device_peak_bytes()),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    if peak_gflops:
        out["matmul_peak_gflops"] = peak_gflops
        out["mfu"] = flops["total"] / step_s / (peak_gflops * 1e9)
    return out


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / MiB
