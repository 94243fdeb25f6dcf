"""``generate``: prefill and decode speed of ``jaxft.sampling.generate`` (greedy, KV cache).

``generate`` is one compiled program (prefill + a ``while_loop`` of decode
steps), so the two phases are separated by running it twice: with one new
token (prefill + the first token) and with ``new_tokens``. Then

    prefill tokens/s = batch·prompt_len / t(1)
    decode tokens/s  = batch·(new_tokens - 1) / (t(new_tokens) - t(1))

Each is the best of ``--repeats`` calls. The transformers peer is timed the same way. EOS is disabled so every run
produces exactly ``new_tokens`` tokens.
"""

from __future__ import annotations

import time
from typing import Any

from jaxft.bench import system


def _timed_generate(cfg, params, ids, new_tokens: int, repeats: int) -> tuple[float, list[float]]:
    """(compile seconds, wall seconds of ``repeats`` calls) of one greedy generate."""
    import jax

    from jaxft.sampling import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, eos_token_ids=(), pad_token_id=0)
    fn = jax.jit(lambda p, x: generate(cfg, p, x, sampling).tokens)
    t0 = time.perf_counter()
    compiled = fn.lower(params, ids).compile()
    compile_s = time.perf_counter() - t0
    compiled(params, ids).block_until_ready()  # first run: page in, warm caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        compiled(params, ids).block_until_ready()
        times.append(time.perf_counter() - t)
    return compile_s, times


def run(cfg, *, batch: int, prompt_len: int, new_tokens: int, dtype: str, repeats: int,
        peak_gflops: float | None, bandwidth: dict[str, float] | None) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxft.models.init import init_params

    if new_tokens < 2:
        raise SystemExit("generate: --new-tokens must be at least 2 (decode speed is t(N) - t(1))")
    params = init_params(cfg, jax.random.key(0), jnp.dtype(dtype))
    dims = system.Dims.of(cfg)
    itemsize = jnp.dtype(dtype).itemsize
    weight_bytes = system.decode_weight_bytes(dims, itemsize)
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    compile_total = 0.0
    for b in sorted({1, batch}):
        ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, prompt_len)), jnp.int32)
        c1, t1 = _timed_generate(cfg, params, ids, 1, repeats)
        cn, tn = _timed_generate(cfg, params, ids, new_tokens, repeats)
        compile_total += c1 + cn
        # Best of the repeats: noise from other processes only ever adds time, and the
        # difference of two noisy medians can even come out negative on tiny shapes.
        prefill, full = min(t1), min(tn)
        decode_step = (full - prefill) / (new_tokens - 1)
        row = {"prefill_tokens_per_s": b * prompt_len / prefill, "decode_tokens_per_s": b / decode_step,
               "decode_step_s": decode_step, "prefill_s": prefill, "total_s": full,
               "tokens_per_s": b * new_tokens / full}
        # Decode reads every weight once per step (whatever the batch) plus the KV cache so far.
        kv = system.kv_cache_bytes_read(dims, prompt_len + new_tokens / 2, itemsize) * b
        row["decode_bytes_per_step"] = weight_bytes + kv
        if bandwidth:
            bound_step = weight_bytes / (bandwidth["read"] * 1e9)
            row["bandwidth_bound_tokens_per_s"] = b / bound_step
            row["fraction_of_bound"] = bound_step / decode_step
        if peak_gflops:
            row["mfu"] = 2 * dims.matmul_params() * b / decode_step / (peak_gflops * 1e9)
        results[str(b)] = row
    one = results["1"]
    out: dict[str, Any] = {
        "tokens_per_s": one["decode_tokens_per_s"],
        "step_s_median": one["decode_step_s"],
        "compile_s": compile_total,
        "mfu": one.get("mfu"),
        "batches": results,
        "weight_bytes": weight_bytes,
        "n_params": cfg.num_params(),
        "backend": jax.default_backend(),
    }
    if peak_gflops:
        out["matmul_peak_gflops"] = peak_gflops
    if bandwidth:
        out["bandwidth_gbs"] = bandwidth
        out["bandwidth_bound_tokens_per_s"] = one["bandwidth_bound_tokens_per_s"]
        out["fraction_of_bound"] = one["fraction_of_bound"]
    return out


_MOVES = ("copy", "dynamic-slice", "slice", "transpose", "dynamic-update-slice", "fusion", "concatenate")


def loop_weight_copies(hlo: str, weight_shapes: set[str]) -> list[str]:
    """Instructions inside the loop bodies of an optimised HLO module (every computation but ENTRY) that
    produce an array of one of ``weight_shapes`` by moving data -- copies, slices, fusions. Loop state
    passes weights through ``parameter``, ``get-tuple-element``, ``tuple`` and ``bitcast`` without moving
    them, so a decode loop that multiplies by the weights where they lie has none."""
    found = []
    in_entry = False
    for line in hlo.splitlines():
        if line and not line[0].isspace():  # a computation's header
            in_entry = line.startswith("ENTRY")
            continue
        line = line.strip()
        if in_entry or "=" not in line:
            continue
        rhs = line.split("=", 1)[1].strip()
        shape, _, rest = rhs.partition(" ")
        op = rest.split("(", 1)[0].strip()
        if shape.split("{", 1)[0] in weight_shapes and op in _MOVES:
            found.append(line[:200])
    return found


def decode_loop_weight_copies(cfg, params, *, prompt_len: int = 8, new_tokens: int = 4) -> list[str]:
    """``loop_weight_copies`` of the compiled greedy ``generate`` for ``params``: the shapes of one layer's
    weights and of the stacked ``[L, ...]`` arrays."""
    import jax
    import jax.numpy as jnp

    from jaxft.sampling import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, eos_token_ids=(), pad_token_id=0)
    ids = jnp.zeros((1, prompt_len), jnp.int32)
    hlo = jax.jit(lambda p, x: generate(cfg, p, x, sampling).tokens).lower(params, ids).compile().as_text()

    def hlo_shape(dtype, shape) -> str:
        return f"{jnp.dtype(dtype).name.replace('float', 'f')}[{','.join(map(str, shape))}]"

    shapes = set()
    for x in jax.tree.leaves(params["model"]["layers"]):
        if x.ndim >= 3:  # kernels; a norm's [hidden] slice shares its shape with activations
            shapes |= {hlo_shape(x.dtype, x.shape), hlo_shape(x.dtype, x.shape[1:])}
    return loop_weight_copies(hlo, shapes)
