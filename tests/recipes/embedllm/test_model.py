"""The history encoder: the condenser against torch's MultiheadAttention, and masking of padding."""

from __future__ import annotations

import numpy as np
import torch

import jax
import jax.numpy as jnp

from jaxft.recipes.embedllm.model import Compressor, CondenserConfig, HistoryEncoder, init_history_encoder
from jaxft.recipes.embedllm.perceiver import PerceiverEncoderConfig

PERCEIVER = PerceiverEncoderConfig(num_latents=4, d_latents=16, d_model=12, num_self_attends_per_block=2,
                                   num_self_attention_heads=2, num_cross_attention_heads=1,
                                   attention_probs_dropout_prob=0.0)


def test_compressor_matches_torch_multihead_attention():
    rng = np.random.default_rng(0)
    d, heads = 16, 4
    module = Compressor(CondenserConfig(num_heads=heads, dropout=0.0))
    latents = rng.normal(size=(2, 7, d)).astype(np.float32)
    mask = np.ones((2, 7), bool)
    mask[1, 4:] = False
    params = module.init(jax.random.PRNGKey(0), jnp.asarray(latents), jnp.asarray(mask))["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(latents), jnp.asarray(mask)))

    a = jax.tree.map(np.asarray, params["attention"])
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    norm = torch.nn.LayerNorm(d)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.concatenate([a[k]["kernel"].T for k in ("q_proj", "k_proj",
                                                                                          "v_proj")])))
        mha.in_proj_bias.copy_(torch.tensor(np.concatenate([a[k]["bias"] for k in ("q_proj", "k_proj", "v_proj")])))
        mha.out_proj.weight.copy_(torch.tensor(a["out_proj"]["kernel"].T))
        mha.out_proj.bias.copy_(torch.tensor(a["out_proj"]["bias"]))
        norm.weight.copy_(torch.tensor(np.asarray(params["layer_norm"]["scale"])))
        norm.bias.copy_(torch.tensor(np.asarray(params["layer_norm"]["bias"])))
        query = torch.tensor(np.asarray(params["query"])).expand(2, 1, d)
        out, _ = mha(query, torch.tensor(latents), torch.tensor(latents), key_padding_mask=torch.tensor(~mask))
        ref = norm(out + query)[:, 0].numpy()
    assert np.abs(ours - ref).max() <= 1e-5


def _encoder_and_inputs(seed=0):
    module = HistoryEncoder(PERCEIVER, CondenserConfig(num_heads=4, dropout=0.1), llm_hidden_size=8)
    params = init_history_encoder(jax.random.PRNGKey(seed), module)
    rng = np.random.default_rng(seed)
    embeds = rng.normal(size=(3, 3, 5, 8)).astype(np.float32)
    mask = np.zeros((3, 3, 5), bool)
    mask[0, 0, :3] = mask[0, 1, :5] = True  # two turns, one padded
    mask[1, 0, :2] = True  # one turn
    # row 2: no history
    return module, params, embeds, mask


def test_padding_tokens_and_absent_turns_do_not_change_the_prefix():
    module, params, embeds, mask = _encoder_and_inputs()
    apply = jax.jit(lambda e, m: module.apply({"params": params}, e, m))
    run = lambda e, m: np.asarray(apply(jnp.asarray(e), jnp.asarray(m)))
    base = run(embeds, mask)
    noise = 50.0 * np.random.default_rng(1).normal(size=embeds.shape).astype(np.float32)
    assert np.abs(run(np.where(mask[..., None], embeds, noise), mask) - base).max() <= 1e-5
    # the same history with fewer turn slots and fewer token slots
    assert np.abs(run(embeds[:2, :2, :5], mask[:2, :2, :5]) - base[:2]).max() <= 1e-5
    assert np.abs(run(embeds[1:2, :1, :2], mask[1:2, :1, :2]) - base[1:2]).max() <= 1e-5
    # where the turns sit among the slots does not matter either (no turn positions)
    moved_e, moved_m = embeds.copy(), mask.copy()
    moved_e[1, 2], moved_m[1, 2], moved_m[1, 0] = embeds[1, 0], mask[1, 0], False
    assert np.abs(run(moved_e, moved_m)[1] - base[1]).max() <= 1e-5


def test_no_history_gives_the_learned_empty_vector_and_history_does_not():
    module, params, embeds, mask = _encoder_and_inputs()
    out = np.asarray(module.apply({"params": params}, jnp.asarray(embeds), jnp.asarray(mask)))
    np.testing.assert_array_equal(out[2], np.asarray(params["empty_history"]))
    assert not np.allclose(out[0], out[1])
    assert np.abs(out[0] - np.asarray(params["empty_history"])).max() > 1e-3


def test_dropout_only_with_an_rng():
    module, params, embeds, mask = _encoder_and_inputs()
    e, m = jnp.asarray(embeds), jnp.asarray(mask)
    a = module.apply({"params": params}, e, m, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    b = module.apply({"params": params}, e, m, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    assert np.abs(np.asarray(a[:2]) - np.asarray(b[:2])).max() > 1e-4


def test_perceiver_from_a_transformers_checkpoint_and_latent_dim_check(tmp_path):
    import pytest
    import transformers

    from configs.embedllm import get_config
    from jaxft.recipes.embedllm.recipe import load_perceiver_params

    hf = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=12, num_self_attends_per_block=1,
                                      num_self_attention_heads=2, num_cross_attention_heads=1)
    transformers.PerceiverModel(hf).save_pretrained(tmp_path)
    section = get_config("smoke").embedllm.perceiver
    section.path, section.latent_dim = str(tmp_path), 16
    cfg, params = load_perceiver_params(section)
    assert (cfg.num_latents, cfg.d_latents, cfg.d_model) == (4, 16, 12)
    assert params["embeddings"]["latents"].shape == (4, 16)
    section.latent_dim = 32
    with pytest.raises(ValueError, match="embedllm.perceiver.latent_dim"):
        load_perceiver_params(section)
