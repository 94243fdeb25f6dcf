"""What the machine can do, what a process uses, and how many FLOPs a step is.

* ``matmul_peak``: the best GFLOP/s of one large jitted matmul, the yardstick of MFU.
* ``copy_bandwidth``: bytes moved per second by a large jitted array copy, the
  yardstick of memory-bound decoding.
* ``PeakRss``: peak resident memory of this process. On Linux it is the
  kernel's high-water mark (``VmHWM``, exact); a sampling thread backs it up
  where ``/proc`` is missing.
* ``train_flops`` / ``decode_weight_bytes``: the model-FLOP and weight-traffic
  formulas (documented in benchmarks/README.md).

This module imports nothing heavy at module level, so the torch peer can use
it without pulling in jax (which would add ~150 MiB to the peer's RSS).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


# -- memory of this process ------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


class PeakRss:
    """Peak RSS of this process from its start: ``VmHWM``, or the max of samples."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.sampled = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sampled = max(self.sampled, current_rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_bytes(self) -> int:
        hwm = _status_kib("VmHWM")
        return max(self.sampled, current_rss_bytes(), 0 if hwm is None else hwm * 1024)


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first device, where the backend reports it (not the CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use") or stats.get("bytes_in_use")


# -- machine peaks ---------------------------------------------------------------------------

def _best_time(fn: Callable[[], Any], repeats: int, min_time_s: float = 0.0) -> float:
    fn()  # compile / first touch
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(dtype: str = "float32", n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul, as the model runs it: in ``dtype`` with float32
    accumulation (``preferred_element_type``), the fastest of ``repeats``."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    best = _best_time(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * n ** 3 / best / 1e9


def copy_bandwidth(mib: int = 1024, repeats: int = 5) -> dict[str, float]:
    """GB/s (1e9 bytes/s) of an in-place jitted ``x + 1`` over a ``mib``-MiB float32 array.

    ``copy``: bytes read + bytes written over time, the memory traffic the
    machine sustains; ``read``: the read half alone. The buffer is donated so
    each run rewrites the same pages instead of faulting in fresh ones.
    """
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    box = [f(jnp.zeros((mib * MiB // 4,), jnp.float32))]

    def once():
        box[0] = f(box[0])
        box[0].block_until_ready()

    best = _best_time(once, repeats)
    nbytes = box[0].size * 4
    return {"copy": 2 * nbytes / best / 1e9, "read": nbytes / best / 1e9}


def measure_in_subprocess(what: str, dtype: str = "float32", n: int = 4096, mib: int = 1024) -> dict[str, float]:
    """Run a peak measurement in a fresh process, so its arrays never count in the
    bench's own peak RSS and its compile caches stay out of the way."""
    import subprocess

    cmd = [sys.executable, "-m", "jaxft.bench.system", what, dtype, str(n), str(mib)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- FLOP and byte formulas ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dims:
    """The dimensions the formulas need (a ``DecoderConfig`` has them all)."""

    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def of(cls, cfg: Any) -> Dims:
        return cls(cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                   cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, bool(cfg.tie_word_embeddings))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each of the seven per-layer projections."""
        h, q, kv, f = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.ffn
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def matmul_params(self) -> int:
        """Parameters that multiply every token: the layers' projections and the LM head."""
        per_layer = sum(i * o for i, o in self.linears().values())
        return self.layers * per_layer + self.hidden * self.vocab

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        return self.layers * sum(rank * (i + o) for name, (i, o) in self.linears().items() if name in targets)


def train_flops(d: Dims, batch: int, seq: int, lora_rank: int, targets: tuple[str, ...]) -> dict[str, float]:
    """Model FLOPs of one training step (remat recomputation not counted, as for MFU).

    * frozen matmuls (N = layer projections + LM head): forward 2·N·tokens, plus
      2·N·tokens in the backward pass for the activation gradients; their weight
      gradients are never formed under LoRA. Full fine-tuning adds 2·N·tokens of
      weight gradients (the usual 6·N·tokens).
    * LoRA factors (r·(in+out) per adapted projection and layer, P in all):
      forward, activation-gradient and weight-gradient matmuls, 6·P·tokens.
    * attention scores and mixing: 4·L·T²·(heads·head_dim) per sequence
      forward, twice that backward (12·L·T²·q per sequence), counting the full
      T×T product as both implementations compute it.
    """
    tokens = batch * seq
    n = d.matmul_params()
    q = d.heads * d.head_dim
    frozen = (4 if lora_rank else 6) * n * tokens
    lora = 6 * d.lora_params(lora_rank, targets) * tokens if lora_rank else 0
    attn = 12 * d.layers * seq * seq * q * batch
    return {"frozen_matmuls": float(frozen), "lora": float(lora), "attention": float(attn),
            "total": float(frozen + lora + attn)}


def train_flops_formula(lora_rank: int) -> str:
    if lora_rank:
        return "4·N·tokens + 6·P_lora·tokens + 12·L·T²·(heads·head_dim)·batch"
    return "6·N·tokens + 12·L·T²·(heads·head_dim)·batch"


def decode_weight_bytes(d: Dims, bytes_per_param: float) -> float:
    """Weight bytes one decode step must read: every projection and the LM head
    (the embedding lookup reads one row, so it does not count)."""
    return d.matmul_params() * bytes_per_param


def kv_cache_bytes_read(d: Dims, context: float, bytes_per_value: float) -> float:
    """K and V bytes one decode step reads at a given context length, per sequence."""
    return 2 * d.layers * context * d.kv_heads * d.head_dim * bytes_per_value


def median(values: list[float]) -> float:
    return float(statistics.median(values))


if __name__ == "__main__":  # python -m jaxft.bench.system matmul|bandwidth DTYPE N MIB
    what, dtype, n, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if what == "matmul":
        print(json.dumps({"gflops": matmul_peak(dtype, n)}))
    elif what == "bandwidth":
        print(json.dumps(copy_bandwidth(mib)))
    else:
        raise SystemExit(f"unknown measurement {what!r} (matmul, bandwidth)")
