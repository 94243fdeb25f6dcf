"""``python -m jaxft.bench train|generate|plan [options] [--vs peft] [--json]`` or ``device-check``; see
jaxft/bench/__init__.py."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from jaxft.bench import report, shapes, system
from jaxft.models.modules import REMAT_POLICIES

PEER = Path(__file__).with_name("peer_peft.py")


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model shape (random weights)")
    g.add_argument("--model", choices=sorted(shapes.MODELS), help="a named shape; overrides the flags below")
    g.add_argument("--arch", default="qwen3", choices=("llama", "mistral", "qwen2", "qwen3"))
    g.add_argument("--hidden", type=int, default=512)
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=4)
    g.add_argument("--head-dim", type=int, default=64)
    g.add_argument("--ffn", type=int, default=1536)
    g.add_argument("--vocab", type=int, default=32000)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="weights and compute (matmuls accumulate in float32)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    p.add_argument("--vs", choices=("peft",), help="also run transformers (+ PEFT) on the same shape and compare")
    p.add_argument("--rounds", type=int, default=3, help="with --vs: alternating jaxft/peer runs (medians)")
    p.add_argument("--peak-n", type=int, default=4096, help="size of the n^3 matmul that measures the peak")
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="array size of the bandwidth copy")
    p.add_argument("--measured", help=argparse.SUPPRESS)  # JSON of machine peaks, passed to worker processes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxft.bench", description="jaxft benchmarks")
    sub = p.add_subparsers(dest="what", required=True)

    t = sub.add_parser("train", help="a LoRA (or full, --lora-rank 0) training step")
    _model_flags(t)
    _common_flags(t)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--seq", type=int, default=256)
    t.add_argument("--lora-rank", type=int, default=16, help="0: full fine-tuning")
    t.add_argument("--steps", type=int, default=5, help="timed steps")
    t.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    t.add_argument("--remat", default="none", choices=REMAT_POLICIES)
    t.add_argument("--peer-remat", choices=("none", "full"),
                   help="with --vs: the peer's gradient checkpointing (full) or none; default: on when --remat is")
    t.add_argument("--chunk", type=int, default=2048, help="tokens per cross-entropy chunk (0: all at once)")

    g = sub.add_parser("generate", help="greedy prefill + decode with the KV cache")
    _model_flags(g)
    _common_flags(g)
    g.add_argument("--batch", type=int, default=8, help="the larger batch (batch 1 always runs)")
    g.add_argument("--prompt-len", type=int, default=128)
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--repeats", type=int, default=3, help="timed calls per length (median)")

    pl = sub.add_parser("plan", help="AOT-compile a recipe's train step for N devices; XLA's memory plan")
    pl.add_argument("--recipe", default="lm", choices=("lm", "condense", "embedllm", "movielens", "summarize",
                                                       "minigpt"),
                    help="lm: the shape flags below; any other: that recipe's seed preset (configs/<name>.py), "
                         "which sets the model, batch, sequence, LoRA, dtypes and remat")
    pl.add_argument("--preset", default="seed",
                    help="the recipe's preset to plan (configs/<name>.py:<preset>; default seed), e.g. seed_gist")
    _model_flags(pl)
    pl.add_argument("--quant", default="none", choices=("none", "nf4", "int8"), help="lm: frozen base format")
    pl.add_argument("--encoder", default="llama-3.2-1b", choices=sorted(shapes.MODELS))
    pl.add_argument("--decoder", default="mistral-7b", choices=sorted(shapes.MODELS))
    pl.add_argument("--decoder-quant", default="nf4", choices=("none", "nf4", "int8"))
    pl.add_argument("--devices", type=int, default=8)
    pl.add_argument("--mesh", default="", help="e.g. fsdp=8 or data=2,fsdp=4 (default: fsdp over all)")
    pl.add_argument("--batch", type=int, default=8)
    pl.add_argument("--seq", type=int, default=2048)
    pl.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    pl.add_argument("--remat", default="full", choices=REMAT_POLICIES)
    pl.add_argument("--lora-rank", type=int, help="default: 16 for lm, 128 for condense (as its config)")
    pl.add_argument("--chunk", type=int, default=2048, help="tokens per cross-entropy chunk (0: all at once)")
    c = pl.add_argument_group("condense layout (defaults: configs/condense.py)")
    c.add_argument("--condense-tokens", type=int, default=512)
    c.add_argument("--compression", type=float, default=2.0, help="encoder tokens per condense token")
    c.add_argument("--context-tokens", type=int, default=4096, help="encoder tokens per text")
    c.add_argument("--decoder-tokens", type=int, default=4096)
    c.add_argument("--continuation-tokens", type=int, default=256)
    pl.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.what == "plan" and args.lora_rank is None:
        args.lora_rank = 128 if args.recipe == "condense" else 16
    if args.what == "plan" and args.recipe not in ("lm", "condense"):
        from jaxft.bench.plan import seed_plan

        seed = seed_plan(args.recipe, args.preset)
        args.seed_plan = seed
        for key in ("batch", "seq", "lora_rank", "quant", "remat", "dtype", "chunk"):
            setattr(args, key, seed[key])
        args.recipe_note = (f"configs/{args.recipe}.py {args.preset} preset planned as the lm step on its model "
                            f"shape: one micro-batch of {seed['batch']} (accum_steps {seed['accum']}), "
                            f"{seed['weight_dtype']} weights, {seed['dtype']} compute; the recipe's own "
                            "heads/encoders are not in it")
    elif args.what == "plan" and args.recipe == "condense":
        args.recipe_note = (f"configs/condense.py {args.preset} preset (layout, models, LoRA, objectives, chunk) "
                            "through its loss_fn")
    return args


# -- machine peaks -----------------------------------------------------------------------------

def measured(args) -> dict[str, Any]:
    """Matmul peak (and for generate the copy bandwidth), each measured in a fresh process."""
    if args.measured:
        return json.loads(args.measured)
    out = {"matmul_peak_gflops": system.measure_in_subprocess("matmul", args.dtype, n=args.peak_n)["gflops"],
           "matmul_peak_n": args.peak_n}
    if args.what == "generate":
        out["bandwidth_gbs"] = system.measure_in_subprocess("bandwidth", mib=args.bandwidth_mib)
    return out


# -- one run in this process -------------------------------------------------------------------

def run_here(args) -> dict[str, Any]:
    from jaxft.models.config import DecoderConfig

    hf = shapes.from_args(args)
    cfg = DecoderConfig.from_hf(hf, source="bench shape")
    peaks = measured(args)
    with system.PeakRss() as rss:
        if args.what == "train":
            from jaxft.bench import train

            out = train.run(cfg, batch=args.batch, seq=args.seq, dtype=args.dtype, lora_rank=args.lora_rank,
                            remat=args.remat, chunk=args.chunk, steps=args.steps, warmup=args.warmup,
                            peak_gflops=peaks["matmul_peak_gflops"])
        else:
            from jaxft.bench import generate

            out = generate.run(cfg, batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                               dtype=args.dtype, repeats=args.repeats, peak_gflops=peaks["matmul_peak_gflops"],
                               bandwidth=peaks.get("bandwidth_gbs"))
    out["peak_rss_mib"] = rss.peak_bytes() / system.MiB
    out["config"] = _ran(args)
    return out


def _ran(args) -> dict[str, Any]:
    """The flags, with the shape fields of the model that ran (``--model`` overrides the shape flags)."""
    hf = shapes.from_args(args)
    shape = dict(arch=hf["model_type"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
                 heads=hf["num_attention_heads"], kv_heads=hf["num_key_value_heads"], head_dim=hf.get("head_dim"),
                 ffn=hf["intermediate_size"], vocab=hf["vocab_size"])
    return {**_describe(args), **shape}


def _describe(args) -> dict[str, Any]:
    keys = ["model", "arch", "hidden", "layers", "heads", "kv_heads", "head_dim", "ffn", "vocab", "dtype", "batch"]
    keys += ["seq", "lora_rank", "steps", "warmup", "remat", "peer_remat", "chunk"] if args.what == "train" else \
        ["prompt_len", "new_tokens", "repeats"]
    return {k: getattr(args, k) for k in keys}


# -- jaxft vs peer, alternating subprocesses ---------------------------------------------------

def _last_json(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"bench: {' '.join(cmd[:4])} ... failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_cmd(args, peaks: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "jaxft.bench", args.what, "--json", "--measured", json.dumps(peaks)]
    for k, v in _describe(args).items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def peer_cmd(args) -> list[str]:
    cmd = [sys.executable, str(PEER), args.what, "--hf-config", json.dumps(shapes.from_args(args)),
           "--dtype", args.dtype, "--batch", str(args.batch)]
    if args.what == "train":
        from jaxft.lora.adapters import DEFAULT_TARGETS

        cmd += ["--seq", str(args.seq), "--lora-rank", str(args.lora_rank), "--targets", ",".join(DEFAULT_TARGETS),
                "--remat", args.peer_remat or args.remat,
                "--steps", str(args.steps), "--warmup", str(args.warmup)]
    else:
        cmd += ["--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
                "--repeats", str(args.repeats)]
    return cmd


def compare(args) -> dict[str, Any]:
    peaks = measured(args)
    ours, theirs = [], []
    for r in range(args.rounds):
        # Alternate who goes first, so slow drift of the machine does not favour one side.
        order = [("jaxft", worker_cmd(args, peaks)), ("peer", peer_cmd(args))]
        for side, cmd in (order if r % 2 == 0 else order[::-1]):
            result = _last_json(cmd)
            (ours if side == "jaxft" else theirs).append(result)
            print(f"round {r + 1}/{args.rounds} {side}: {result['tokens_per_s']:.1f} tok/s, "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    med = lambda runs, key: system.median([run[key] for run in runs])
    out = dict(ours[0])
    for key in ("tokens_per_s", "step_s_median", "compile_s", "peak_rss_mib"):
        out[key] = med(ours, key)
    if ours[0].get("mfu") is not None:
        out["mfu"] = med(ours, "mfu")
    out.update(
        peer_tokens_per_s=med(theirs, "tokens_per_s"), peer_peak_rss_mib=med(theirs, "peak_rss_mib"),
        peer_step_s_median=med(theirs, "step_s_median"), peer_torch=theirs[0].get("torch"),
        rounds=args.rounds, runs={"jaxft": ours, "peer": theirs},
    )
    out["ratio_tokens_per_s"] = out["tokens_per_s"] / out["peer_tokens_per_s"]
    out["ratio_peak_rss"] = out["peak_rss_mib"] / out["peer_peak_rss_mib"]
    if args.what == "train" and peaks.get("matmul_peak_gflops"):
        peak_flops = peaks["matmul_peak_gflops"] * 1e9
        out["peer_mfu"] = ours[0]["model_flops_per_step"] / out["peer_step_s_median"] / peak_flops
    if args.what == "generate":
        out["batches"], out["peer_batches"] = median_batches(ours), median_batches(theirs)
        out["ratios_by_batch"] = {b: {k: out["batches"][b][k] / out["peer_batches"][b][k]
                                      for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
                                  for b in out["batches"]}
    return out


def median_batches(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per batch size, the median of each generate figure over the rounds."""
    return {b: {k: system.median([run["batches"][b][k] for run in runs]) for k in row}
            for b, row in runs[0]["batches"].items()}


# -- plan ----------------------------------------------------------------------------------------

def ensure_cpu_devices(n: int, argv: list[str]) -> None:
    """Make jax see ``n`` CPU devices: configure it if no backend is up yet, else re-exec."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # a backend is already initialised
        pass
    if len(jax.devices("cpu")) >= n:
        return
    flag = f"--xla_force_host_platform_device_count={n}"
    if flag in os.environ.get("XLA_FLAGS", ""):
        raise SystemExit(f"plan: asked XLA for {n} CPU devices and did not get them")
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
    os.execve(sys.executable, [sys.executable, "-m", "jaxft.bench", *argv], env)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["device-check"]:  # its own flags (jaxft/bench/device_check.py)
        from jaxft.bench import device_check

        device_check.main(argv[1:])
        return
    args = parse_args(argv)
    if args.what == "plan":
        ensure_cpu_devices(args.devices, argv)
        from jaxft.bench import plan

        with system.PeakRss() as rss:
            out = plan.run(args)
        out["peak_rss_mib"] = rss.peak_bytes() / system.MiB
        if getattr(args, "recipe_note", None):
            out["note"] = args.recipe_note
        report.print_plan(out)
    else:
        out = compare(args) if args.vs else run_here(args)
        report.print_run(args.what, out)
    if args.json:
        print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
