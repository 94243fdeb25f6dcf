"""The PyTorch side of ``--vs peft``: transformers + PEFT on the same shape, in its own process.

    python -m jaxft.bench.peer_peft train --hf-config '{...}' --batch 8 --seq 256 --lora-rank 16

``jaxft.bench`` runs this file by path rather than with ``-m``: importing the
``jaxft`` package would load jax into the peer and add its memory to the
peer's peak RSS. Prints one JSON object on the last line of stdout.

What it runs is a typical, well-configured PEFT script: a transformers model
built from the config (random weights, default attention implementation),
``get_peft_model`` with LoRA on the seven projections, ``torch.optim.AdamW``
over the trainable parameters, ``model.train()``, ``model(ids, labels=ids,
use_cache=False)``, ``loss.backward()``, ``step()``, ``zero_grad()``. The
generate peer is ``model.generate`` (greedy, its default dynamic KV cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")



def _load_system():
    """jaxft/bench/system.py without importing the jaxft package (and so jax)."""
    spec = importlib.util.spec_from_file_location("_bench_system", Path(__file__).with_name("system.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


system = _load_system()


def _device() -> str:
    """The GPU when torch sees one (so a GPU bench compares on the same card), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / system.MiB if torch.cuda.is_available() else None


def _model(hf: dict, dtype: str):
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**hf)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).to(_device())
    return model, config


def _dims(config) -> system.Dims:
    return system.Dims(config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                       config.num_attention_heads, config.num_key_value_heads,
                       getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
                       bool(config.tie_word_embeddings))


def run_train(args, hf: dict) -> dict:
    import torch

    model, config = _model(hf, args.dtype)
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                          target_modules=args.targets.split(","), task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    if args.remat != "none":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.lora_rank:
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(_device())
    mask = torch.ones_like(ids)

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step_s = system.median(times)
    flops = system.train_flops(_dims(config), args.batch, args.seq, args.lora_rank, tuple(args.targets.split(",")))
    return {"tokens_per_s": args.batch * args.seq / step_s, "step_s_median": step_s, "step_s": times,
            "loss_first": losses[0], "loss_last": losses[-1], "model_flops_per_step": flops["total"],
            "n_trainable": sum(p.numel() for p in params), "device_peak_mib": _device_peak_mib()}


def _time_generate(model, ids, new_tokens: int, repeats: int) -> list[float]:
    import torch

    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None,
              max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    times = []
    with torch.inference_mode():
        model.generate(ids, **kw)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            out = model.generate(ids, **kw)
            _sync()
            times.append(time.perf_counter() - t)
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return times


def run_generate(args, hf: dict) -> dict:
    import torch

    model, config = _model(hf, args.dtype)
    model.eval()
    model.generation_config.eos_token_id = None
    gen = torch.Generator().manual_seed(0)
    results = {}
    for batch in sorted({1, args.batch}):
        ids = torch.randint(0, config.vocab_size, (batch, args.prompt_len), generator=gen).to(_device())
        prefill = min(_time_generate(model, ids, 1, args.repeats))  # best of, as jaxft.bench.generate
        full = min(_time_generate(model, ids, args.new_tokens, args.repeats))
        decode_step = (full - prefill) / (args.new_tokens - 1)
        results[str(batch)] = {"prefill_tokens_per_s": batch * args.prompt_len / prefill,
                               "decode_tokens_per_s": batch / decode_step, "decode_step_s": decode_step,
                               "total_s": full, "tokens_per_s": batch * args.new_tokens / full}
    one = results["1"]
    return {"tokens_per_s": one["decode_tokens_per_s"], "step_s_median": one["decode_step_s"], "batches": results,
            "device_peak_mib": _device_peak_mib()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("train", "generate"))
    p.add_argument("--hf-config", required=True, help="the model's config.json, as a JSON string")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--targets", default="", help="train: comma-separated module names (jaxft.lora.DEFAULT_TARGETS)")
    p.add_argument("--remat", default="none")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.what == "train" and args.lora_rank and not args.targets:
        p.error("train with --lora-rank > 0 needs --targets")

    import torch

    hf = json.loads(args.hf_config)
    with system.PeakRss() as rss:
        out = run_train(args, hf) if args.what == "train" else run_generate(args, hf)
    out.update(peak_rss_mib=rss.peak_bytes() / system.MiB, torch=torch.__version__, threads=torch.get_num_threads())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
