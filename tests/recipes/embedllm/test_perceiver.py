"""The Perceiver IO encoder against transformers' PerceiverModel (tiny random configs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import jax
import jax.numpy as jnp

from jaxft.checkpoint.sources import CheckpointError
from jaxft.recipes.embedllm.perceiver import (PerceiverEncoderConfig, PerceiverModel, load_perceiver,
                                              save_perceiver, to_hf_state)

# One config on transformers' defaults for channels, one with explicit qk/v channels, several
# blocks and widening MLPs, and cross-attention shaped by the queries.
CONFIGS = {
    "default": dict(num_latents=6, d_latents=32, d_model=24, num_blocks=1, num_self_attends_per_block=2,
                    num_self_attention_heads=4, num_cross_attention_heads=1),
    "channels": dict(num_latents=5, d_latents=32, d_model=20, num_blocks=2, num_self_attends_per_block=3,
                     num_self_attention_heads=2, num_cross_attention_heads=2, qk_channels=16, v_channels=32,
                     self_attention_widening_factor=2, cross_attention_widening_factor=3,
                     use_query_residual=False),
    "q_shape": dict(num_latents=4, d_latents=16, d_model=12, num_self_attends_per_block=1,
                    num_self_attention_heads=2, num_cross_attention_heads=4,
                    cross_attention_shape_for_attention="q", hidden_act="gelu_new"),
}


def _save_hf(name: str, directory, seed: int = 0):
    config = transformers.PerceiverConfig(**CONFIGS[name], attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = transformers.PerceiverModel(config).eval()
    with torch.no_grad():  # random norms and biases, so a mix-up cannot hide behind ones/zeros
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "layernorm" in pname:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def _inputs(d_model: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 9, d_model)).astype(np.float32)
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0  # right padded
    mask[2, :4] = 0  # left padded
    return x, mask


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encoder_matches_transformers(tmp_path, name):
    model = _save_hf(name, tmp_path)
    cfg, params = load_perceiver(tmp_path)
    x, mask = _inputs(cfg.d_model)
    with torch.no_grad():
        ref = model(inputs=torch.tensor(x), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(PerceiverModel(cfg).apply({"params": params}, jnp.asarray(x), jnp.asarray(mask)))
    assert ours.shape == ref.shape == (3, cfg.num_latents, cfg.d_latents)
    assert np.abs(ours - ref).max() <= 1e-4


def test_padding_is_masked(tmp_path):
    """Changing padded inputs, or the amount of padding, does not change the latents."""
    _save_hf("default", tmp_path)
    cfg, params = load_perceiver(tmp_path)
    x, mask = _inputs(cfg.d_model)
    apply = lambda x, m: np.asarray(PerceiverModel(cfg).apply({"params": params}, jnp.asarray(x), jnp.asarray(m)))
    base = apply(x, mask)
    noisy = np.where(mask[..., None] == 1, x, 100.0 * np.random.default_rng(1).normal(size=x.shape))
    assert np.abs(apply(noisy, mask) - base).max() <= 1e-5
    alone = apply(x[1:2, :6], mask[1:2, :6])  # row 1 without its padding
    assert np.abs(alone - base[1:2]).max() <= 1e-5


def test_save_roundtrip_loads_in_transformers(tmp_path):
    cfg = PerceiverEncoderConfig(**CONFIGS["channels"])
    params = PerceiverModel(cfg).init(jax.random.PRNGKey(3), jnp.zeros((1, 2, cfg.d_model)))["params"]
    save_perceiver(tmp_path, cfg, params)
    model = transformers.PerceiverModel.from_pretrained(tmp_path).eval()
    ref_state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = to_hf_state(cfg, params)
    assert set(ours) == set(ref_state)
    assert all(np.array_equal(ours[k], ref_state[k]) for k in ours)
    cfg2, params2 = load_perceiver(tmp_path)
    assert cfg2 == cfg
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


def test_prefixed_checkpoint_and_missing_tensor(tmp_path):
    """Names under ``perceiver.`` (a PerceiverFor* checkpoint) load; a missing tensor is named."""
    from safetensors.numpy import load_file, save_file

    model = _save_hf("default", tmp_path / "plain")
    state = load_file(str(tmp_path / "plain" / "model.safetensors"))
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    (prefixed / "config.json").write_text((tmp_path / "plain" / "config.json").read_text())
    save_file({f"perceiver.{k}": v for k, v in state.items()} | {"decoder.extra": np.zeros(2, np.float32)},
              str(prefixed / "model.safetensors"))
    _, params = load_perceiver(prefixed)
    _, plain = load_perceiver(tmp_path / "plain")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, plain))
    del state["encoder.self_attends.1.mlp.dense2.weight"]
    save_file(state, str(prefixed / "model.safetensors"))
    with pytest.raises(CheckpointError, match="encoder.self_attends.1.mlp.dense2.weight"):
        load_perceiver(prefixed)
    del model


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="hidden_act"):
        PerceiverEncoderConfig(hidden_act="mish")
    with pytest.raises(ValueError, match="v_channels"):
        PerceiverEncoderConfig(d_latents=32, d_model=8, num_self_attention_heads=2, num_cross_attention_heads=1,
                               v_channels=16)


def _save_hub_layout(model, directory):
    """What deepmind/multimodal-perceiver publishes: config.json and a PerceiverFor* pytorch_model.bin."""
    directory.mkdir()
    model.config.to_json_file(str(directory / "config.json"))
    state = {f"perceiver.{k}": v for k, v in model.state_dict().items()} | {"decoder.extra": torch.zeros(2)}
    torch.save(state, directory / "pytorch_model.bin")


def test_pytorch_bin_checkpoint_reads_safely(tmp_path, monkeypatch):
    """A .bin checkpoint loads (torch.load with weights_only) to the same latents as transformers';
    without torch the error says how to read or convert it; the conversion writes safetensors."""
    import sys

    from jaxft.recipes.embedllm.cli import main

    model = _save_hf("default", tmp_path / "plain")
    _save_hub_layout(model, tmp_path / "hub")
    cfg, params = load_perceiver(tmp_path / "hub")
    x, mask = _inputs(cfg.d_model)
    with torch.no_grad():
        ref = model(inputs=torch.tensor(x), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(PerceiverModel(cfg).apply({"params": params}, jnp.asarray(x), jnp.asarray(mask)))
    assert np.abs(ours - ref).max() <= 1e-4

    assert main(["convert-perceiver", "--checkpoint", str(tmp_path / "hub"), "--out", str(tmp_path / "conv")]) == 0
    assert (tmp_path / "conv" / "model.safetensors").is_file()
    _, converted = load_perceiver(tmp_path / "conv")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, converted))

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(CheckpointError, match="reading it needs torch .* convert-perceiver"):
        load_perceiver(tmp_path / "hub")
    monkeypatch.undo()
    (tmp_path / "hub" / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a readable torch state dict"):
        load_perceiver(tmp_path / "hub")
