"""The minigpt block options against a float64 numpy transcription, and the Llama shape against transformers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft
from jaxft.models import decoder, modules
from jaxft.models.config import DecoderConfig
from jaxft.models.init import init_params
from jaxft.recipes.minigpt import model as mg


def _cfg(**kw) -> DecoderConfig:
    hf = mg.hf_config(vocab_size=97, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, context=32,
                      **kw)
    return DecoderConfig.from_hf(hf)


def _params(cfg, seed=0):
    params = init_params(cfg, jax.random.key(seed), jnp.float32, std=0.2)
    rng = np.random.default_rng(seed)

    def perturb(path, x):  # random norms and biases, so mixing them up cannot hide behind ones/zeros
        name = jax.tree_util.keystr(path)
        if "norm" in name or name.endswith("['bias']"):
            base = 1.0 if ("norm" in name and name.endswith("['weight']")) else 0.0
            return jnp.asarray(base + 0.1 * rng.standard_normal(x.shape), x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(perturb, params)


# ----------------------------------------------------------------------------- float64 numpy transcription


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _rms(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, pos, dim):  # x [t, h, d], rotate-half layout
    inv = 1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)
    ang = pos[:, None] * inv
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _silu(x):
    return x / (1 + np.exp(-x))


def _block_np(cfg, p, x):
    """One block on x [t, d], written from the reference's definitions."""
    t, _ = x.shape
    nh, kvh, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    norm = ((lambda v, q: _ln(v, q["weight"], q["bias"])) if cfg.norm_type == "layer_norm"
            else (lambda v, q: _rms(v, q["weight"])))
    a = p["self_attn"]
    h = norm(x, p["input_layernorm"])
    q = (h @ a["q_proj"]["kernel"] + a["q_proj"]["bias"]).reshape(t, nh, hd)
    k = (h @ a["k_proj"]["kernel"] + a["k_proj"]["bias"]).reshape(t, kvh, hd)
    v = (h @ a["v_proj"]["kernel"] + a["v_proj"]["bias"]).reshape(t, kvh, hd)
    if cfg.position_embedding == "rope":
        pos = np.arange(t, dtype=np.float64)
        q, k = _rope(q, pos, hd), _rope(k, pos, hd)
    k = np.repeat(k, nh // kvh, axis=1)  # repeat_interleave: head i reads kv head i // group
    v = np.repeat(v, nh // kvh, axis=1)
    s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("hts,shd->thd", w, v).reshape(t, nh * hd)
    attn = o @ a["o_proj"]["kernel"] + a["o_proj"]["bias"]
    m = p["mlp"]

    def mlp(y):
        y = norm(y, p["post_attention_layernorm"])
        # reference: w2(w1(y) * silu(w3(y))); gate_proj is w3, up_proj is w1
        return (_silu(y @ m["gate_proj"]["kernel"]) * (y @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]

    if cfg.parallel_residual:
        return x + attn + mlp(x)
    x = x + attn
    return x + mlp(x)


def _sincos(t, d):
    pos = np.arange(t, dtype=np.float64)[:, None]
    i = np.arange(0, d, 2, dtype=np.float64)[None]
    pe = np.zeros((t, d))
    pe[:, 0::2] = np.sin(pos / 10000 ** (i / d))
    pe[:, 1::2] = np.cos(pos / 10000 ** (i / d))
    return pe


def _model_np(cfg, params, ids):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    emb = p["model"]["embed_tokens"]["weight"]
    x = emb[ids] * cfg.embedding_multiplier
    if cfg.position_embedding == "sinusoidal":
        x = x + _sincos(len(ids), cfg.hidden_size)
    for i in range(cfg.num_hidden_layers):
        x = _block_np(cfg, jax.tree.map(lambda a: a[i], p["model"]["layers"]), x)  # noqa: B023 - used at once
    n = p["model"]["norm"]
    x = _ln(x, n["weight"], n["bias"]) if cfg.norm_type == "layer_norm" else _rms(x, n["weight"])
    return x @ emb.T


# ----------------------------------------------------------------------------- tests


VARIANTS = [
    dict(),  # the reference block
    dict(parallel_residual=False),
    dict(norm_type="rms_norm"),
    dict(position_embedding="rope"),
    dict(shape="llama"),
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "ref")
def test_one_block_matches_float64_numpy(options):
    cfg = _cfg(**options)
    params = _params(cfg)
    x = np.random.default_rng(1).standard_normal((1, 11, cfg.hidden_size)).astype(np.float32)
    layer = jax.tree.map(lambda a: a[0], params["model"]["layers"])
    mask = jnp.ones((1, 11), bool)
    positions = decoder.positions_from_mask(mask)
    slots = jnp.broadcast_to(jnp.arange(11), (1, 11))
    attn_mask = decoder.AttentionMask(slots, mask, positions, positions, None)
    ours, _ = modules.Block(cfg).apply({"params": layer}, jnp.asarray(x), None, None, attn_mask, positions, None)
    ref = _block_np(cfg, jax.tree.map(lambda a: np.asarray(a, np.float64), layer), x[0].astype(np.float64))
    np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("options", VARIANTS[:1] + VARIANTS[-1:], ids=["ref", "llama"])
def test_whole_model_matches_float64_numpy(options):
    cfg = _cfg(**options)
    params = _params(cfg)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, 13)
    logits, _ = decoder.forward(cfg, params, jnp.asarray(ids[None]))
    ref = _model_np(cfg, params, ids)
    np.testing.assert_allclose(np.asarray(logits[0]), ref, atol=2e-4, rtol=1e-4)


def test_reference_defaults():
    cfg = DecoderConfig.from_hf(mg.hf_config(vocab_size=16000))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.max_position_embeddings) == (
        384, 6, 6, 256)
    assert cfg.intermediate_size == 1024 == int(8 * 384 / 3)
    assert cfg.parallel_residual and cfg.norm_type == "layer_norm" and cfg.position_embedding == "sinusoidal"
    assert cfg.tie_word_embeddings and cfg.attention_bias and cfg.o_proj_bias and not cfg.mlp_bias
    assert cfg.embedding_multiplier == pytest.approx(math.sqrt(384)) and cfg.dropout == 0.1


def test_dropout_only_with_a_key_and_at_the_right_rate():
    cfg = _cfg(dropout=0.5)
    params = _params(cfg)
    ids = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 9)))
    plain = jax.jit(lambda: decoder.forward(cfg, params, ids)[0])
    dropped = jax.jit(lambda key: decoder.forward(cfg, params, ids, dropout_rng=key)[0])
    a, b = plain(), plain()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # deterministic without a key
    c, d, e = dropped(jax.random.key(0)), dropped(jax.random.key(0)), dropped(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(d))
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3 and np.abs(np.asarray(c) - np.asarray(e)).max() > 1e-3
    # the dropout helper keeps about 1 - rate of the entries and rescales them by 1 / (1 - rate)
    x = jnp.ones((200, 200))
    y = np.asarray(modules.dropout(x, 0.1, jax.random.key(4)))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.9], rtol=1e-6)
    assert abs((y == 0).mean() - 0.1) < 0.01


def test_cached_generation_matches_full_forward():
    cfg = _cfg()
    params = _params(cfg)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, (1, 6))
    out = jaxft.generate(cfg, params, ids, jaxft.SamplingConfig(max_new_tokens=5, output_logits=True,
                                                                eos_token_ids=()))
    full = np.concatenate([ids, np.asarray(out.tokens)], axis=1)
    logits, _ = decoder.forward(cfg, params, jnp.asarray(full))
    np.testing.assert_allclose(np.asarray(out.logits[0]), np.asarray(logits[0, 5:10]), atol=1e-4)


def test_llama_shape_loads_in_transformers_with_equal_logits(tmp_path):
    import torch
    import transformers
    cfg = _cfg(shape="llama")
    params = _params(cfg)
    jaxft.save_pretrained(tmp_path / "hf", cfg, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = np.random.default_rng(6).integers(0, cfg.vocab_size, (2, 15))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    ours, _ = decoder.forward(cfg, params, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)
    cfg2, params2 = jaxft.load_pretrained(tmp_path / "hf")
    again, _ = decoder.forward(cfg2, params2, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(again), np.asarray(ours), atol=1e-6)


def test_reference_shape_saves_and_reloads(tmp_path):
    cfg = _cfg()
    params = _params(cfg)
    jaxft.save_pretrained(tmp_path / "m", cfg, params)
    cfg2, params2 = jaxft.load_pretrained(tmp_path / "m")
    assert cfg2 == cfg
    ids = jnp.arange(10)[None]
    np.testing.assert_allclose(np.asarray(decoder.forward(cfg2, params2, ids)[0]),
                               np.asarray(decoder.forward(cfg, params, ids)[0]), atol=1e-6)
