"""``python -m jaxft.bench`` end to end on a tiny shape: JSON keys present, numbers finite and positive.

Nothing here is about speed. The three commands run concurrently (most of
their time is single-threaded compilation) to keep the file fast.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

TINY = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--ffn", "128",
        "--vocab", "256"]
CHEAP_PEAKS = ["--peak-n", "128", "--bandwidth-mib", "8"]
COMMANDS = {
    "train_vs_peft": ["train", *TINY, *CHEAP_PEAKS, "--batch", "2", "--seq", "32", "--steps", "1", "--warmup", "1",
                      "--vs", "peft", "--rounds", "1"],
    "generate": ["generate", *TINY, *CHEAP_PEAKS, "--batch", "2", "--prompt-len", "8", "--new-tokens", "64",
                 "--repeats", "5"],
    "plan": ["plan", *TINY, "--devices", "2", "--mesh", "fsdp=2", "--batch", "2", "--seq", "32", "--chunk", "16"],
}
RUN_KEYS = ("tokens_per_s", "step_s_median", "compile_s", "peak_rss_mib", "mfu")
PEER_KEYS = ("peer_tokens_per_s", "peer_peak_rss_mib", "ratio_tokens_per_s", "ratio_peak_rss")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    procs = {name: subprocess.Popen([sys.executable, "-m", "jaxft.bench", *args, "--json"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in COMMANDS.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def _positive(result: dict, keys) -> None:
    for key in keys:
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_train_vs_peft(results):
    r = results["train_vs_peft"]
    _positive(r, RUN_KEYS + PEER_KEYS + ("model_flops_per_step", "matmul_peak_gflops"))
    assert len(r["runs"]["jaxft"]) == len(r["runs"]["peer"]) == 1
    assert r["n_trainable"] == r["runs"]["peer"][0]["n_trainable"]  # same LoRA on both sides
    assert math.isfinite(r["loss_first"]) and math.isfinite(r["runs"]["peer"][0]["loss_first"])


def test_generate(results):
    r = results["generate"]
    _positive(r, RUN_KEYS + ("bandwidth_bound_tokens_per_s",))
    assert set(r["batches"]) == {"1", "2"}
    for row in r["batches"].values():
        # decode tok/s is a difference of two timings: under load it may come out at any sign
        _positive(row, ("prefill_tokens_per_s", "bandwidth_bound_tokens_per_s"))
        assert math.isfinite(row["decode_tokens_per_s"])


def test_plan(results):
    r = results["plan"]
    assert r["mesh"]["fsdp"] == 2
    _positive(r, ("compile_s", "peak_rss_mib", "xla_flops_per_device"))
    _positive(r["per_device_bytes"], ("arguments", "outputs", "temporaries", "total"))
    assert set(r["fits"].values()) == {True}
    # Sharded: each device holds less than the whole frozen model.
    assert r["per_device_bytes"]["arguments"] < sum(r["global_bytes"].values())
    # The frozen base streams onto its shardings: a device's load peak is under the whole frozen model.
    load = r["load_per_device_bytes"]
    assert 0 < load["resident_per_device"] <= load["peak_per_device"] < r["global_bytes"]["frozen"]


def test_decode_loop_multiplies_by_the_weights_in_place():
    """No op inside the compiled generate's loops copies a layer's weights (the detector does flag a
    layer scan, which slices each layer's kernels out of the stacked arrays every step)."""
    import jax
    import jax.numpy as jnp

    from jaxft.bench.generate import decode_loop_weight_copies, loop_weight_copies
    from jaxft.models.config import DecoderConfig
    from jaxft.models.decoder import forward
    from jaxft.models.init import init_params

    cfg = DecoderConfig.from_hf(dict(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=96,
                                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     max_position_embeddings=256, tie_word_embeddings=False))
    params = init_params(cfg, jax.random.key(0))
    assert decode_loop_weight_copies(cfg, params) == []

    def scanned_decode(p, ids):  # four single-token forwards through the stacked (scanned) layers
        step = lambda i, h: h + forward(cfg, p, ids + i, output="hidden")[0]
        return jax.lax.fori_loop(0, 4, step, jnp.zeros((1, 1, 64)))

    hlo = jax.jit(scanned_decode).lower(params, jnp.zeros((1, 1), jnp.int32)).compile().as_text()
    assert loop_weight_copies(hlo, {"f32[96,64]", "f32[64,96]"})


def test_residual_stream_hint_splits_rows_over_the_batch_axes():
    """Under ``jax.set_mesh`` (as the trainer and ``plan`` trace) constrain_batch splits rows over fsdp;
    without a mesh it leaves the array alone."""
    script = """
import jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxft.models.sharding_hints import constrain_batch
from jaxft.train.mesh import make_mesh
mesh = make_mesh({"fsdp": 4})
f = jax.jit(lambda x: constrain_batch(x * 2.0))
x = jnp.ones((8, 3, 5))
with jax.set_mesh(mesh):
    print(f.lower(x).compile().output_shardings.spec)
print(getattr(jax.jit(lambda x: constrain_batch(x * 2.0)).lower(x).compile().output_shardings, "spec", "single"))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with_mesh, without = out.stdout.strip().splitlines()[-2:]
    assert "('fsdp'" in with_mesh, with_mesh
    assert "fsdp" not in without


def test_the_reported_config_is_the_shape_that_ran():
    """With ``--model``, the JSON's ``config`` names the model's dimensions, not the shape flags' defaults."""
    from jaxft.bench.__main__ import _ran, parse_args

    config = _ran(parse_args(["train", "--model", "qwen3-0.6b"]))
    assert (config["model"], config["hidden"], config["layers"], config["heads"], config["vocab"]) == \
        ("qwen3-0.6b", 1024, 28, 16, 151936)
    assert _ran(parse_args(["train", *TINY]))["hidden"] == 64


def test_generate_rounds_report_the_median_of_each_batch_figure():
    from jaxft.bench.__main__ import median_batches

    runs = [{"batches": {"1": {"decode_tokens_per_s": v, "prefill_tokens_per_s": 10 * v}}} for v in (93.0, 99.0, 98.0)]
    assert median_batches(runs) == {"1": {"decode_tokens_per_s": 98.0, "prefill_tokens_per_s": 980.0}}
