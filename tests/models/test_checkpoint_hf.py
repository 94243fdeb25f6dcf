"""Loading and saving HF checkpoints: round trips, sharded indexes, bf16, errors."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxft
from jaxft.models.config import ConfigError
from tests.tiny import save_tiny

IDS = np.array([[5, 17, 42, 9, 77, 3, 100, 64, 12, 8]])


def _hf_logits(directory):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen2"])
def test_save_pretrained_round_trips_through_transformers(tiny_dir, tmp_path, family):
    cfg, params = jaxft.load_pretrained(tiny_dir(family))
    out = jaxft.save_pretrained(tmp_path / "out", cfg, params)
    ours = np.asarray(jaxft.logits(cfg, params, IDS))
    assert np.abs(_hf_logits(out) - ours).max() <= 1e-4
    cfg2, params2 = jaxft.load_pretrained(out)
    assert cfg2 == cfg
    assert np.array_equal(np.asarray(jaxft.logits(cfg2, params2, IDS)), ours)


def test_sharded_checkpoint_with_index_loads(tmp_path):
    directory = save_tiny("mistral", tmp_path / "sharded", max_shard_size="40KB")
    assert (directory / "model.safetensors.index.json").exists()
    assert len(list(directory.glob("*.safetensors"))) > 2
    cfg, params = jaxft.load_pretrained(directory)
    assert np.abs(np.asarray(jaxft.logits(cfg, params, IDS)) - _hf_logits(directory)).max() <= 1e-4
    # and we write sharded checkpoints that transformers reads back
    out = jaxft.save_pretrained(tmp_path / "resharded", cfg, params, max_shard_bytes=50_000)
    assert (out / "model.safetensors.index.json").exists()
    assert np.abs(np.asarray(jaxft.logits(cfg, params, IDS)) - _hf_logits(out)).max() <= 1e-4


def test_bf16_logits_within_bf16_tolerance(tiny_dir):
    directory = tiny_dir("qwen3")
    cfg, p32 = jaxft.load_pretrained(directory)
    _, p16 = jaxft.load_pretrained(directory, dtype=jnp.bfloat16)
    assert p16["model"]["layers"]["self_attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16
    l32 = np.asarray(jaxft.logits(cfg, p32, IDS))
    l16 = np.asarray(jaxft.logits(cfg, p16, IDS))
    scale = np.abs(l32).max()
    err = np.abs(l32 - l16).max()
    assert 0 < err <= 0.05 * scale  # bf16 has ~3 significant digits; the error must be real but small


def test_wrong_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        jaxft.load_pretrained(tmp_path / "does-not-exist")


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory = shutil.copytree(tiny_dir("llama"), tmp_path / "broken")
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(jaxft.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        jaxft.load_pretrained(directory)


def test_shape_mismatch_is_named(tiny_dir, tmp_path):
    directory = shutil.copytree(tiny_dir("llama"), tmp_path / "mismatch")
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 96
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(jaxft.CheckpointError, match=r"gate_proj\.weight.*shape \(112, 64\).*\(96, 64\)"):
        jaxft.load_pretrained(directory)


@pytest.mark.parametrize("change, key", [
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_unsupported_config_is_named(tiny_dir, tmp_path, change, key):
    directory = shutil.copytree(tiny_dir("llama"), tmp_path / "unsupported")
    config = json.loads((directory / "config.json").read_text())
    config.update(change)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=key):
        jaxft.load_pretrained(directory)


def test_streaming_load_keeps_host_memory_near_one_copy(tmp_path):
    """Peak RSS growth while loading stays near the size of the weights (not 2-3x)."""
    import subprocess
    import sys
    import textwrap

    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536,
                                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    script = textwrap.dedent(f"""
        import resource, jax, jax.numpy as jnp, jaxft
        jax.numpy.zeros(1).block_until_ready()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cfg, params = jaxft.load_pretrained({str(tmp_path / 'm')!r}, dtype=jnp.float32)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, jaxft.checkpoint.hf.param_bytes(params))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grown, weights = map(int, out.stdout.split())
    assert grown < 1.6 * weights, (grown, weights)
