"""``plan``: compile a recipe's train step ahead of time for N devices and read XLA's memory plan.

Nothing is materialised: parameters, optimizer state and batch are
``jax.ShapeDtypeStruct`` trees carrying their ``NamedSharding`` over a mesh of
fake CPU devices, and ``jit(...).lower(...).compile()`` runs XLA's SPMD
partitioner and buffer assignment for one device's program. The numbers are
XLA:CPU's buffer assignment -- a close proxy for a TPU or GPU, not a promise:
those backends fuse differently, pad layouts (TPU tiles) and add runtime
overheads.

Beside the step it reports what loading the frozen models holds per device
(``jaxft.loaders.load_footprint``): each tensor is streamed onto its sharding, so the
peak is a device's shards plus, while one kernel is quantized, that device's share of it.
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

    seed = getattr(args, "seed_plan", None)
    (cfg, weights, _, _), = lm_loads(args, dtype)
    base = _base(cfg, weights, args.quant)
    trainable, frozen, loss_fn = lm_task(cfg, base, lora_rank=args.lora_rank, compute=dtype, remat=args.remat,
                                         chunk=args.chunk)
    b, t = args.batch, args.seq
    batch = {"input_ids": ((b, t), "int32"), "attention_mask": ((b, t), "int32"), "loss_mask": ((b, t), "int32")}
    flops = system.train_flops(system.Dims.of(cfg), b, t, args.lora_rank, DEFAULT_TARGETS)["total"]
    name = args.model or f"custom {cfg.model_type} h{cfg.hidden_size} L{cfg.num_hidden_layers}"
    if seed:
        name = seed["name"]
    what = (f"{args.recipe} recipe, {name} ({cfg.num_params() / 1e9:.2f}B params, {args.quant} base), "
            f"{f'LoRA r={args.lora_rank}' if args.lora_rank else 'full fine-tuning'}, batch {b}x{t}")
    return trainable, frozen, loss_fn, batch, what, flops


def gist_parts(config, dtype) -> tuple[Any, Any, Any, dict, str, float]:
    """A condense.design=gist preset: one LLM (LoRA'd compressor and frozen target), its gist layout,
    LoRA rank, objectives and chunk, through the recipe's own loss."""
    import jax

    from jaxft import lora as lora_lib
    from jaxft.recipes.condense import gist
    from jaxft.recipes.condense.gist_task import layout_from_config

    k, name = config.condense, SEED_MODELS[config.encoder.path]
    cfg = _cfg(name)
    base = _base(cfg, dtype, str(config.encoder.quantize))
    adapters = jax.eval_shape(lambda: lora_lib.init(jax.random.key(1), cfg, base, rank=int(config.lora.rank),
                                                    alpha=float(config.lora.alpha), targets=tuple(config.lora.targets),
                                                    dropout=float(config.lora.dropout)))
    model = gist.GistModel(llm=cfg, layout=layout_from_config(k.gist), lora_config=adapters.config, dtype=dtype,
                           remat=str(config.encoder.remat))
    trainable = {"lora": adapters.params, **jax.eval_shape(lambda: gist.init_params(jax.random.key(2), model))}
    weights = {"ae": float(k.objectives.ae), "continuation": float(k.objectives.continuation)}
    chunk = int(config.loss.chunk_size) or None

    def loss_fn(t, f, batch, rng):
        return gist.gist_loss(model, t, f, batch, rng, weights=weights, chunk_size=chunk)

    layout, b = model.layout, int(config.train.batch_size)
    spans = (b, layout.max_spans, layout.span_length)
    what = (f"condense gist design: {name} as LoRA'd compressor (r={config.lora.rank}) and frozen target; "
            f"batch {b}, {layout.max_tokens} tokens in {layout.max_spans} spans of {layout.span_length} -> "
            f"{layout.num_gist_tokens} gist tokens each; objectives {weights}")
    return trainable, {"llm": base}, loss_fn, {"ids": (spans, "int32"), "mask": (spans, "bool")}, what, float("nan")


def condense_parts(args, dtype) -> tuple[Any, Any, Any, dict, str, float]:
    """configs/condense.py's preset (default seed): its layout (Layout.create), models, LoRA rank, objectives
    and chunk."""
    import jax

    from jaxft import lora as lora_lib
    from jaxft.lora import DEFAULT_TARGETS
    from jaxft.recipes.condense import model as cmodel
    from jaxft.recipes.condense import objectives
    from jaxft.recipes.condense.recipe import layout_from_config

    config = _seed_config("condense", getattr(args, "preset", "seed"))
    if str(config.condense.design) == "gist":
        return gist_parts(config, dtype)
    k = config.condense
    layout = layout_from_config(k)
    enc_name, dec_name = SEED_MODELS[config.encoder.path], SEED_MODELS[config.decoder.path]
    enc, dec = _cfg(enc_name), _cfg(dec_name)
    enc_base = _base(enc, dtype, str(config.encoder.quantize))
    dec_base = _base(dec, dtype, str(config.decoder.quantize))
    rank = int(config.lora.rank)
    adapters = jax.eval_shape(lambda: lora_lib.init(jax.random.key(1), enc, enc_base, rank=rank,
                                                    alpha=float(config.lora.alpha), targets=DEFAULT_TARGETS))
    model = cmodel.CondenseModel(encoder=enc, decoder=dec, num_condense_tokens=layout.num_condense_tokens,
                                 segment_length=layout.segment_length, dtype=dtype,
                                 remat=str(config.encoder.remat), decoder_remat=str(config.decoder.remat),
                                 decoder_remat_group=int(config.decoder.remat_group),
                                 lora_config=adapters.config, projector=str(k.projector),
                                 positions=str(k.positions))
    extra = jax.eval_shape(lambda: cmodel.init_params(jax.random.key(2), model))
    trainable = {"lora": adapters.params, **extra}
    frozen = {"encoder": enc_base, "decoder": dec_base}
    loss_fn = objectives.make_loss_fn(model, weights=dict(k.objectives), chunk_size=int(config.loss.chunk_size))
    b, s, seg = int(config.train.batch_size), layout.max_segments, layout.segment_length
    d, c = layout.max_decoder_tokens, layout.continuation_width
    batch = {"enc_ids": ((b, s, seg), "int32"), "enc_mask": ((b, s, seg), "bool"),
             "dec_ids": ((b, d), "int32"), "dec_mask": ((b, d), "bool"),
             "cont_ids": ((b, layout.num_levels, c), "int32"), "cont_mask": ((b, layout.num_levels, c), "bool")}
    if layout.max_prompt_tokens:  # the instruction objective: prompt + completion after the states
        ins = (b, layout.instruction_width)
        batch.update({"ins_ids": (ins, "int32"), "ins_mask": (ins, "bool"), "ins_loss": (ins, "bool")})
    what = (f"condense seed: encoder {enc_name} (LoRA r={rank}) + {layout.num_condense_tokens} condense tokens "
            f"per {seg}-token segment x {s} + projector -> frozen {dec_name} ({config.decoder.quantize}); "
            f"batch {b}, {d} decoder tokens, {layout.num_levels} continuation level(s) x {c} tokens, "
            f"{layout.instruction_width} prompt + completion tokens, objectives {dict(k.objectives)}")
    return trainable, frozen, loss_fn, batch, what, float("nan")


def lm_loads(args, dtype) -> list[tuple[Any, Any, str, bool]]:
    """The model ``lm_parts`` plans, as ``(cfg, weight dtype, format, double_quant)`` for its load footprint."""
    import jax.numpy as jnp

    from jaxft.models.config import DecoderConfig

    seed = getattr(args, "seed_plan", None)
    cfg = DecoderConfig.from_hf(seed["hf"] if seed else shapes.from_args(args), source="bench shape")
    weights = jnp.dtype(seed["weight_dtype"]) if seed else dtype
    return [(cfg, weights, args.quant, bool(seed and seed.get("double_quant")))]


def condense_loads(dtype, preset: str = "seed") -> list[tuple[Any, Any, str, bool]]:
    """The condense preset's encoder and frozen decoder, loaded in that order (as ``condense_parts`` plans
    them); the gist design's one LLM."""
    config = _seed_config("condense", preset)
    if str(config.condense.design) == "gist":
        section = config.encoder
        return [(_cfg(SEED_MODELS[section.path]), dtype, str(section.quantize), False)]
    return [(_cfg(SEED_MODELS[section.path]), dtype, str(section.quantize), bool(section.get("double_quant", False)))
            for section in (config.encoder, config.decoder)]


def load_plan(loads, mesh) -> dict[str, Any]:
    """What streaming the frozen models onto ``mesh`` holds (``jaxft.loaders.load_footprint``), bytes."""
    from jaxft.loaders import load_footprint
    from jaxft.train.placement import Placement

    placement = Placement(mesh)
    footprint = None
    for cfg, weights, fmt, double_quant in loads:
        step = load_footprint(cfg, weights, placement, fmt, double_quant)
        footprint = step if footprint is None else footprint.then(step)
    return {"peak_per_device": footprint.peak_per_device(), "resident_per_device": max(footprint.resident.values()),
            "host_per_process": footprint.host_bytes}


# Checkpoints named by the recipes' seed presets -> the bench's shapes of the same models.
SEED_MODELS = {
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral-7b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "Qwen/Qwen3-0.6B": "qwen3-0.6b",
    "Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b",
    "Bossologist/Qwen3-4B-Instruct-2507_general_ft_merged": "qwen3-4b",
}
SEED_RECIPES = ("condense", "embedllm", "movielens", "summarize", "minigpt")


def _seed_config(recipe: str, preset: str = "seed"):
    from pathlib import Path

    from jaxft.config import load_config_file

    path = Path(__file__).resolve().parents[2] / "configs" / f"{recipe}.py"
    return load_config_file(f"{path}:{preset}")


def seed_plan(recipe: str, preset: str = "seed") -> dict[str, Any]:
    """A single-LLM recipe's preset (default seed) as the lm step: model shape, batch (one micro-batch),
    sequence length, LoRA rank, base format, remat and dtypes, all read from configs/<recipe>.py."""
    c = _seed_config(recipe, preset)
    micro = int(c.train.batch_size) // int(c.optim.accum_steps)
    out = dict(lora_rank=int(c.lora.rank), quant=str(c.model.quantize), remat=str(c.model.remat),
               double_quant=bool(c.model.get("double_quant", False)),
               dtype=str(c.model.compute_dtype), weight_dtype=str(c.model.dtype), batch=micro,
               chunk=int(c.loss.chunk_size), accum=int(c.optim.accum_steps))
    if recipe == "minigpt":
        from jaxft.recipes.minigpt.model import hf_config

        m = c.minigpt
        out["hf"] = hf_config(vocab_size=int(m.vocab_size), hidden_size=int(m.d_model), num_layers=int(m.n_layer),
                              num_heads=int(m.n_head), num_kv_heads=int(m.n_kv_head) or None,
                              context=int(m.context), dropout=float(m.dropout), shape=str(m.shape),
                              parallel_residual=bool(m.parallel_residual), norm_type=str(m.norm_type),
                              position_embedding=str(m.position_embedding), pad_token_id=0)
        out.update(name=f"minigpt d{m.d_model} L{m.n_layer} vocab {m.vocab_size}", seq=int(m.context))
        return out
    name = SEED_MODELS[c.model.path]
    out.update(hf=shapes.hf_config(name), name=name)
    if recipe == "movielens":
        out["seq"] = int(c.data.cutoff_len)
    elif recipe == "summarize":
        out["seq"] = int(c.summarize.max_input_length) + int(c.summarize.max_target_length)
    elif recipe == "embedllm":
        e = c.embedllm  # upper bound: the whole conversation budget (the LLM reads a condensed prefix + last turn)
        out["seq"] = int(e.max_conversation_tokens)
    return out


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
    preset = getattr(args, "preset", "seed")
    load = load_plan(condense_loads(dtype, preset) if args.recipe == "condense" else lm_loads(args, dtype), mesh)
    batch_shapes = {k: (shape, jnp.dtype(dt)) for k, (shape, dt) in batch.items()}

    step, s_sh, f_sh, b_sh, optimizer = place_step(trainable, frozen, loss_fn, batch_shapes, mesh)
    from jaxft.train.step import init_state

    state = jax.eval_shape(lambda t: init_state(t, optimizer, 0, ema=False), trainable)
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=b_sh[k]) for k, (shape, dt) in batch_shapes.items()}
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):  # as the trainer traces its step: activation sharding hints see the mesh
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
        # Loading the frozen models (streamed onto their shardings), before the first step.
        "load_per_device_bytes": load,
        "load_peak_per_device_gib": load["peak_per_device"] / GiB,
        "fits": {name: max(per_device["total"], load["peak_per_device"]) <= cap for name, cap in TARGETS},
        # Keys every bench mode reports; a plan runs no step.
        "tokens_per_s": None, "step_s_median": None, "mfu": None,
    }
    return out
