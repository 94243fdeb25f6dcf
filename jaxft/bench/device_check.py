"""``python -m jaxft.bench device-check``: one prepared run on a GPU machine, sized for 10 minutes on one H100.

The machine has jax (0.10 or 0.11 with its CUDA plugins), flax, optax, orbax, torch, transformers and
peft, and no network. The steps, each a subprocess with its own time limit (a failed or timed-out step
is recorded and the next one still runs):

1. install: the carried wheels (``benchmarks/wheels/``, the pure-Python dependencies of jaxft such an
   image lacks, fetched here by ``--fetch-wheels``) and jaxft itself from the tree, all ``--no-deps``
   and ``--no-index``.
2. environment: versions, devices, the device's bfloat16 peak.
3. parity: the logits-vs-transformers and PEFT round-trip tests, with jax on the GPU.
4. attention: cuDNN fused attention vs the XLA path (values, forward+backward time).
5. train: ``bench train`` on the Qwen3-0.6B shape in bfloat16 against PEFT on the same GPU.
6. generate: ``bench generate`` at batch 1 and 32.

It writes one JSON (``--out``) after every step: each step's status and time, and the figures
(tok/s, MFU against the device's bf16 peak, peak device memory, cuDNN vs XLA). ``--dry-run`` prints
the steps and the carried wheels with their sizes; ``--tiny`` swaps in small shapes (a CPU run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "benchmarks" / "wheels"
MiB = 1024 * 1024
MAX_WHEELS_MIB = 64  # what the device tool carries with the tree

# What the steps import that an image with jax/flax/optax/orbax/torch/transformers/peft (and their own
# dependencies: numpy, safetensors, tokenizers, huggingface_hub, absl, etils, psutil, tqdm, PyYAML,
# setuptools) lacks: ml_collections (jaxft.config and jaxft.train.optim import it) and pytest with its
# two dependencies (the parity step). jaxft's other dependencies (grain, datasets, gguf, rouge-score,
# tensorboardX, matplotlib, sentencepiece) are imported only by the data pipeline, recipes, GGUF and
# reports, which no step runs. All pure Python: one wheel serves every Python 3 and platform.
CARRIED = ("ml_collections==1.1.0", "pytest==9.2.0", "pluggy==1.7.0", "iniconfig==2.3.1")

# Dense bfloat16 tensor-core peaks (TFLOP/s, no sparsity) by device kind, from the vendors' sheets.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: int
    what: str


def bf16_peak_tflops(device_kind: str) -> float | None:
    for name, peak in BF16_PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def carried_wheels(folder: Path = WHEELS) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in folder.glob("*.whl")) if folder.is_dir() else []


def plan(tiny: bool, python: str = sys.executable, folder: Path = WHEELS) -> list[Step]:
    """The steps in order. ``tiny``: small shapes and only the steps a CPU machine can run meaningfully."""
    bench = (python, "-m", "jaxft.bench")
    me = (python, "-m", "jaxft.bench.device_check")
    shape = ("--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
             "--ffn", "96", "--vocab", "256") if tiny else ("--model", "qwen3-0.6b")
    wheels = tuple(str(folder / name) for name, _ in carried_wheels(folder))
    pip = (python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "-q")
    steps = [
        Step("install", pip + wheels + ("-e", str(REPO)), 45, "carried wheels and jaxft from the tree"),
        Step("environment", me + ("environment",), 30, "versions, devices, bf16 peak"),
        Step("parity", (python, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
                        "tests/test_decoder_parity.py", "tests/lora/test_peft.py"), 150,
             "logits vs transformers, PEFT round trip (jax on the device)"),
        Step("attention", me + ("attention",) + (("--batch", "1", "--seq", "256", "--heads", "4", "--kv-heads", "2")
                                                 if tiny else ()), 60, "cuDNN fused attention vs XLA"),
        Step("train", bench + ("train",) + shape + ("--dtype", "bfloat16", "--vs", "peft", "--rounds", "1", "--json")
             + (("--batch", "2", "--seq", "64", "--steps", "2", "--peak-n", "256") if tiny else
                ("--batch", "8", "--seq", "1024", "--steps", "10", "--warmup", "2")), 180,
             "bench train, bf16, vs PEFT on the same device"),
        Step("generate", bench + ("generate",) + shape + ("--dtype", "bfloat16", "--json")
             + (("--batch", "4", "--prompt-len", "16", "--new-tokens", "8", "--repeats", "1", "--peak-n", "256",
                 "--bandwidth-mib", "16") if tiny else
                ("--batch", "32", "--prompt-len", "128", "--new-tokens", "64", "--repeats", "2")), 100,
             "bench generate at batch 1 and 32" if not tiny else "bench generate at batch 1 and 4"),
    ]
    if tiny:  # a CPU run: nothing to install, the parity tests run in CI anyway, and a shared CPU is slow
        steps = [dataclasses.replace(s, timeout_s=4 * s.timeout_s) for s in steps
                 if s.name not in ("install", "parity")]
    return steps


def fetch_wheels(folder: Path = WHEELS) -> None:
    """Download the carried wheels (run on a machine with the registry)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                    str(folder), *CARRIED], check=True)
    total = sum(size for _, size in carried_wheels(folder))
    if total > MAX_WHEELS_MIB * MiB:
        raise SystemExit(f"device-check: the wheels in {folder} take {total / MiB:.1f} MiB, over {MAX_WHEELS_MIB}")


def dry_run(steps: list[Step], folder: Path = WHEELS) -> str:
    lines = ["device-check steps (each a subprocess with its time limit):"]
    for i, s in enumerate(steps, 1):
        lines.append(f"{i}. {s.name} [{s.timeout_s} s]: {s.what}")
        lines.append("   + " + " ".join(s.argv))
    wheels = carried_wheels(folder)
    lines.append(f"carried wheels ({folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}):")
    lines += [f"   {name}  {size / 1024:.0f} KiB" for name, size in wheels] or ["   none (run --fetch-wheels)"]
    lines.append(f"   total {sum(s for _, s in wheels) / MiB:.2f} MiB (limit {MAX_WHEELS_MIB} MiB); "
                 f"time limits add up to {sum(s.timeout_s for s in steps)} s")
    return "\n".join(lines)


# -- running the steps ------------------------------------------------------------------------------

def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _pytest_counts(text: str) -> dict[str, int]:
    """{'passed': n, 'failed': n, ...} from pytest's closing line."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", text)}


def _run(argv: tuple[str, ...], env: dict[str, str], timeout_s: int) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr); a timeout ends the step's whole process group (the
    bench's worker and peer processes too)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def run_step(step: Step, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    rc, out, err = _run(step.argv, env, step.timeout_s)
    row: dict[str, Any] = {"status": "timeout" if rc is None else "ok" if rc == 0 else "failed", "rc": rc,
                           "seconds": time.perf_counter() - t0}
    if step.name == "parity":
        row["tests"] = _pytest_counts(out)
    elif step.name != "install":
        row["result"] = _last_json(out)
    if rc != 0 or row.get("result", 0) is None:
        row["tail"] = (out[-2000:] + err[-2000:]).strip()
    return row


def figures(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers out of the steps' rows (missing steps give missing figures)."""
    res = lambda name: (rows.get(name) or {}).get("result") or {}
    env, train, gen, att = res("environment"), res("train"), res("generate"), res("attention")
    peak = env.get("bf16_peak_tflops")
    out: dict[str, Any] = {"device": env.get("device_kind"), "jax": env.get("jax"), "bf16_peak_tflops": peak}
    if "parity" in rows:
        out["parity_tests"] = rows["parity"].get("tests")
    if train:
        peer = (train.get("runs") or {}).get("peer") or [{}]
        out["train"] = {
            "tokens_per_s": train.get("tokens_per_s"), "peer_tokens_per_s": train.get("peer_tokens_per_s"),
            "ratio_tokens_per_s": train.get("ratio_tokens_per_s"),
            "mfu_of_device_peak": _mfu(train.get("model_flops_per_step"), train.get("step_s_median"), peak),
            "peer_mfu_of_device_peak": _mfu(train.get("model_flops_per_step"), train.get("peer_step_s_median"), peak),
            "mfu_of_measured_matmul": train.get("mfu"),
            "device_peak_mib": train.get("device_peak_mib"), "peer_device_peak_mib": peer[0].get("device_peak_mib"),
            "compile_s": train.get("compile_s")}
    if gen:
        out["generate"] = {b: {k: row.get(k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
                           for b, row in (gen.get("batches") or {}).items()}
    if att:
        out["attention"] = att
    return out


def _mfu(flops: float | None, step_s: float | None, peak_tflops: float | None) -> float | None:
    if not (flops and step_s and peak_tflops):
        return None
    return flops / step_s / (peak_tflops * 1e12)


def run_all(steps: list[Step], out_path: Path) -> dict[str, Any]:
    # The tree's jaxft wins over any installed copy, in every step's subprocess.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    rows: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {}
    for step in steps:
        print(f"device-check: {step.name} ({step.what}) ...", file=sys.stderr, flush=True)
        rows[step.name] = run_step(step, env)
        print(f"device-check: {step.name} {rows[step.name]['status']} in {rows[step.name]['seconds']:.0f} s",
              file=sys.stderr, flush=True)
        report = {"figures": figures(rows), "steps": rows}
        out_path.write_text(json.dumps(report, indent=1, default=float))  # after every step: a kill keeps them
    return report


# -- the in-process steps -------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    import importlib.metadata as md

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "transformers", "peft"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    return {"jax": jax.__version__, "versions": versions, "backend": jax.default_backend(), "device_kind": kind,
            "devices": jax.device_count(), "bf16_peak_tflops": bf16_peak_tflops(kind)}


def _timed(fn, *args, repeats: int = 5) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def attention_figures(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int) -> dict[str, Any]:
    """cuDNN (through the arguments jaxft builds) vs jaxft's XLA path, bf16: error against float32 dense
    attention on valid rows, and the median forward+backward time; right padding and masked holes."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxft.models import attention as attn
    from jaxft.models import attention_kernels as kernels

    r = np.random.default_rng(0)
    q = jnp.asarray(r.normal(size=(batch, seq, heads, head_dim)), jnp.bfloat16)
    k, v = (jnp.asarray(r.normal(size=(batch, seq, kv_heads, head_dim)), jnp.bfloat16) for _ in range(2))
    impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
    out: dict[str, Any] = {"kernel": impl, "shape": [batch, seq, heads, kv_heads, head_dim]}
    for layout in ("right", "holes"):
        valid = np.ones((batch, seq), bool)
        valid[0, seq - seq // 8:] = False
        if layout == "holes":
            valid[-1, : seq // 16] = False
        valid = jnp.asarray(valid)
        pos = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), -1) - 1, 0)
        mask = attn.AttentionMask(jnp.broadcast_to(jnp.arange(seq), (batch, seq)), valid, pos, pos)
        # The lambdas run within this iteration of the loop, so the loop variables they read are current.
        paths = {"cudnn": lambda q, k, v: kernels.cudnn_attention(q, k, v, mask, implementation=impl),  # noqa: B023
                 "xla": lambda q, k, v: attn.attention(q, k, v, mask, impl="xla")}  # noqa: B023
        ref = attn.dense_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask.dense())
        keep = valid[:, :, None, None]
        row = {}
        for name, f in paths.items():
            fwd_bwd = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2),  # noqa: B023
                                                 argnums=(0, 1, 2)))
            err = jnp.max(jnp.where(keep, jnp.abs(jax.jit(f)(q, k, v).astype(jnp.float32) - ref), 0.0))
            row[name] = {"max_abs_err_vs_f32": float(err), "fwd_bwd_s": _timed(fwd_bwd, q, k, v)}
        row["speedup"] = row["xla"]["fwd_bwd_s"] / row["cudnn"]["fwd_bwd_s"]
        out[layout] = row
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxft.bench device-check", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the steps and the carried wheels, run nothing")
    p.add_argument("--fetch-wheels", action="store_true", help=f"pip download the carried wheels into {WHEELS}")
    p.add_argument("--tiny", action="store_true", help="small shapes, the steps a CPU can run")
    p.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    p.add_argument("--out", type=Path, default=Path("device-check.json"))
    sub = p.add_subparsers(dest="inner")  # the in-process steps, run by the check itself
    sub.add_parser("environment")
    a = sub.add_parser("attention")
    for flag, default in (("--batch", 4), ("--seq", 2048), ("--heads", 16), ("--kv-heads", 8), ("--head-dim", 128)):
        a.add_argument(flag, type=int, default=default)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.inner == "environment":
        print(json.dumps(environment()))
        return
    if args.inner == "attention":
        print(json.dumps(attention_figures(args.batch, args.seq, args.heads, args.kv_heads, args.head_dim)))
        return
    if args.fetch_wheels:
        fetch_wheels()
    steps = plan(args.tiny)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {s.name for s in steps})
        if unknown:
            print(f"device-check: unknown step(s) {', '.join(unknown)} (steps: {', '.join(s.name for s in steps)})",
                  file=sys.stderr)
            raise SystemExit(2)
        steps = [s for s in steps if s.name in names]
    if args.dry_run:
        print(dry_run(steps))
        return
    if args.fetch_wheels:
        return
    report = run_all(steps, args.out)
    print(json.dumps(report["figures"], indent=1, default=float))


if __name__ == "__main__":
    main()
