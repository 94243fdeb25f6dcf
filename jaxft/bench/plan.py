"""``plan``: compile a recipe's train step ahead of time for N devices and read XLA's memory plan.

Nothing is materialised: parameters, optimizer state and batch are
``jax.ShapeDtypeStruct`` trees carrying their ``NamedSharding`` over a mesh of
fake CPU devices, and ``jit(...).lower(...).compile()`` runs XLA's SPMD
partitioner and buffer assignment for one device's program. The numbers are
XLA:CPU's buffer assignment -- a close proxy for a TPU or GPU, not a promise:
those backends fuse differently, pad layouts (TPU tiles) and add runtime
overheads.
"""

from __future__ import annotations

import math
import time
from typing import Any

from jaxft.bench import shapes, system

GiB = 1024 ** 3
TARGETS = (("TPU v5e (16 GiB HBM)", 16 * GiB), ("80 GB GPU", 80 * 10 ** 9))


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _cfg(name: str):
    from jaxft.models.config import DecoderConfig

    return DecoderConfig.from_hf(shapes.hf_config(name), source=f"bench model '{name}'")


def _base(cfg, dtype, quant: str):
    import jax

    from jaxft import lora as lora_lib
    from jaxft.models.init import abstract_params

    base = abstract_params(cfg, dtype)
    if quant != "none":
        base = jax.eval_shape(lambda p: lora_lib.quantize(p, cfg, fmt=quant), base)
    return base


def lm_parts(args, dtype) -> tuple[Any, Any, Any, dict, str, float]:
    from jaxft.bench.train import lm_task
    from jaxft.lora import DEFAULT_TARGETS

    from jaxft.models.config import DecoderConfig

    cfg = DecoderConfig.from_hf(shapes.from_args(args), source="bench shape")
    base = _base(cfg, dtype, args.quant)
    trainable, frozen, loss_fn = lm_task(cfg, base, lora_rank=args.lora_rank, compute=dtype, remat=args.remat,
                                         chunk=args.chunk)
    b, t = args.batch, args.seq
    batch = {"input_ids": ((b, t), "int32"), "attention_mask": ((b, t), "int32"), "loss_mask": ((b, t), "int32")}
    flops = system.train_flops(system.Dims.of(cfg), b, t, args.lora_rank, DEFAULT_TARGETS)["total"]
    name = args.model or f"custom {cfg.model_type} h{cfg.hidden_size} L{cfg.num_hidden_layers}"
    what = (f"lm recipe, {name} ({cfg.num_params() / 1e9:.2f}B params, {args.quant} base), "
            f"{'LoRA r=%d' % args.lora_rank if args.lora_rank else 'full fine-tuning'}, batch {b}x{t}")
    return trainable, frozen, loss_fn, batch, what, flops


def condense_parts(args, dtype) -> tuple[Any, Any, Any, dict, str, float]:
    import jax

    from jaxft import lora as lora_lib
    from jaxft.lora import DEFAULT_TARGETS
    from jaxft.recipes.condense import model as cmodel
    from jaxft.recipes.condense import objectives

    enc, dec = _cfg(args.encoder), _cfg(args.decoder)
    enc_base = _base(enc, dtype, "none")
    dec_base = _base(dec, dtype, args.decoder_quant)
    rank = args.lora_rank or 128  # configs/condense.py's rank
    adapters = jax.eval_shape(lambda: lora_lib.init(jax.random.key(1), enc, enc_base, rank=rank, alpha=float(rank),
                                                    targets=DEFAULT_TARGETS))
    n = args.condense_tokens
    seg = int(round(args.compression * n))
    model = cmodel.CondenseModel(encoder=enc, decoder=dec, num_condense_tokens=n, segment_length=seg, dtype=dtype,
                                 remat=args.remat, lora_config=adapters.config)
    extra = jax.eval_shape(lambda: cmodel.init_params(jax.random.key(2), model))
    trainable = {"lora": adapters.params, **extra}
    frozen = {"encoder": enc_base, "decoder": dec_base}
    loss_fn = objectives.make_loss_fn(model, continuation_weight=1.0, chunk_size=args.chunk)
    b, s = args.batch, math.ceil(args.context_tokens / seg)
    c, d = args.continuation_tokens, args.decoder_tokens
    batch = {"enc_ids": ((b, s, seg), "int32"), "enc_mask": ((b, s, seg), "bool"),
             "dec_ids": ((b, d), "int32"), "dec_mask": ((b, d), "bool"),
             "cont_ids": ((b, s - 1, c), "int32"), "cont_mask": ((b, s - 1, c), "bool")}
    what = (f"condense recipe, encoder {args.encoder} (LoRA r={rank}) + {n} condense tokens per "
            f"{seg}-token segment x {s} segments + projector -> frozen {args.decoder} ({args.decoder_quant}); "
            f"batch {b}, {d} decoder tokens, {s - 1} continuation levels x {c} tokens")
    return trainable, frozen, loss_fn, batch, what, float("nan")


def run(args) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from jaxft.train import mesh as mesh_lib
    from jaxft.bench.train import place_step

    devices = jax.devices("cpu")
    if len(devices) < args.devices:
        raise SystemExit(f"plan: {args.devices} devices wanted, jax has {len(devices)} CPU devices")
    mesh_shape = dict(kv.split("=") for kv in args.mesh.split(",")) if args.mesh else {"fsdp": "-1"}
    mesh = mesh_lib.make_mesh({k: int(v) for k, v in mesh_shape.items()}, devices[:args.devices])
    dtype = jnp.dtype(args.dtype)
    parts = condense_parts if args.recipe == "condense" else lm_parts
    trainable, frozen, loss_fn, batch, what, model_flops = parts(args, dtype)
    batch_shapes = {k: (shape, jnp.dtype(dt)) for k, (shape, dt) in batch.items()}

    step, s_sh, f_sh, b_sh, optimizer = place_step(trainable, frozen, loss_fn, batch_shapes, mesh)
    from jaxft.train.step import init_state

    state = jax.eval_shape(lambda t: init_state(t, optimizer, 0, ema=False), trainable)
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=b_sh[k]) for k, (shape, dt) in batch_shapes.items()}
    t0 = time.perf_counter()
    compiled = step.lower(_abstract(state, s_sh), _abstract(frozen, f_sh), abstract_batch).compile()
    compile_s = time.perf_counter() - t0

    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    per_device = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "temporaries": mem.temp_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,  # donated state: counted in arguments and outputs once
        "code": mem.generated_code_size_in_bytes,
    }
    per_device["total"] = (per_device["arguments"] + per_device["outputs"] - per_device["aliased"]
                           + per_device["temporaries"] + per_device["code"])
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    out = {
        "recipe": args.recipe,
        "what": what,
        "mesh": dict(mesh.shape),
        "compile_s": compile_s,
        "per_device_bytes": per_device,
        "per_device_gib": {k: v / GiB for k, v in per_device.items()},
        "global_bytes": {"trainable": nbytes(trainable), "frozen": nbytes(frozen),
                         "optimizer_state": nbytes(state["opt_state"])},
        "xla_flops_per_device": float(cost.get("flops", 0.0)) if cost else None,
        "model_flops_per_step": None if math.isnan(model_flops) else model_flops,
        "fits": {name: per_device["total"] <= cap for name, cap in TARGETS},
        # Keys every bench mode reports; a plan runs no step.
        "tokens_per_s": None, "step_s_median": None, "mfu": None,
    }
    return out
