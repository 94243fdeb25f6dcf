"""A frozen base streams onto its shardings: on 8 fake devices the load holds about one shard per device.

The script (``tests/scripts/sharded_load.py``) loads a bf16 checkpoint (and a GGUF file) onto an
fsdp=8 placement as plain, NF4 (double quant) and int8 bases, checks every leaf equals an unsharded
load bit for bit and sits where ``Placement.sharding_for`` says (so ``Trainer``'s placement keeps
it), and measures per-device live bytes and process memory while a load runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "sharded_load.py"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from jaxft.checkpoint.gguf_export import write_gguf
    from jaxft.checkpoint.hf import save_pretrained
    from jaxft.models.config import DecoderConfig
    from jaxft.models.init import init_params

    tmp = tmp_path_factory.mktemp("sharded_load")
    # 58 MB of bf16: 8 layers (each stacked MLP kernel 12.6 MB), untied head.
    cfg = DecoderConfig.from_hf(dict(model_type="llama", vocab_size=4096, hidden_size=512, intermediate_size=1536,
                                     num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                                     tie_word_embeddings=False))
    params = init_params(cfg, jax.random.PRNGKey(0), jnp.bfloat16)
    save_pretrained(tmp / "model", cfg, params)
    write_gguf(tmp / "model.gguf", cfg, params, tensor_type="f16")
    del params
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp / "out.json"), str(tmp / "model"),
                          str(tmp / "model.gguf")], env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("fmt", ["none", "nf4", "int8"])
def test_load_holds_about_one_shard_per_device(measured, fmt):
    r = measured[fmt]
    whole, shard = r["unsharded_bf16_bytes"], r["model_bytes"] / 8
    assert r["split_leaves"] > 0
    # What stays on a device is its shard (plus replicated norms), as the footprint predicts.
    assert r["resident_per_device"] == r["predicted_resident_per_device"]
    assert r["resident_per_device"] < 1.1 * shard + 64 * 1024
    # While loading, a device holds its shards plus a share of the one tensor being placed; never the model.
    assert r["peak_per_device"] <= r["predicted_peak_per_device"]
    assert r["peak_per_device"] < 0.2 * whole, r
    # The previous route (unsharded load, then resharded) had the whole unquantized model on one device
    # (sampled every 0.5 ms, so the last tensor or two may fall between samples).
    assert r["before_peak_per_device"] >= 0.8 * whole, r
    # The fake devices' buffers live in this process: it holds the model once (all 8 shards), plus about one
    # host tensor and each device's working share of it -- not a second copy of the model.
    working = 8 * (r["predicted_peak_per_device"] - r["predicted_resident_per_device"])
    assert r["peak_rss_growth"] < r["model_bytes"] + 2 * r["predicted_host_bytes"] + working + 16 * 2**20, r
    assert r["peak_rss_growth"] < 0.5 * r["before_peak_rss_growth"], r


def test_gguf_streams_onto_the_placement(measured):
    assert measured["gguf_split_leaves"] > 0  # and equal to the unsharded load: checked in the script


def test_quantizing_shard_by_shard_equals_quantizing_whole():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(SCRIPT.parent / "placed_quant.py")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.splitlines()
    assert lines[-1] == "ok" and any("'fsdp'" in line.split("P(")[-1] for line in lines), out.stdout
