"""The causal-LM kit: its loss against numpy/optax, the global batch split, export -> load round trips."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import forward
from jaxft.models.init import init_params
from jaxft.tokenization.demo import demo_tokenizer
from jaxft.train import lm as kit


def _problem(b=2, t=13, h=8, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, h)).astype(np.float32)
    head = (rng.normal(size=(h, vocab)) / np.sqrt(h)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(b, t))
    mask = (rng.random((b, t)) > 0.3).astype(np.int32)
    targets = np.where(mask == 1, targets, -100)  # ignore ids on masked tokens must be harmless
    weights = rng.uniform(0.5, 2.0, size=(b, t)).astype(np.float32)
    return hidden, head, targets, mask, weights


def _optax_sums(logits, targets, mask, weights, smoothing):
    """Weighted sums of optax's softmax cross-entropy against smoothed one-hot labels."""
    keep = mask.astype(bool)
    labels = optax.smooth_labels(jax.nn.one_hot(targets[keep], logits.shape[-1]), smoothing)
    ce = np.asarray(optax.softmax_cross_entropy(jnp.asarray(logits[keep], jnp.float32), labels), np.float64)
    w = weights[keep].astype(np.float64)
    return (w * ce).sum(), w.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_token_loss_is_weighted_smoothed_cross_entropy(smoothing, chunk_size):
    hidden, head, targets, mask, weights = _problem()
    out = kit.token_loss(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), jnp.asarray(mask),
                         jnp.asarray(weights), label_smoothing=smoothing, chunk_size=chunk_size)
    logits = hidden.astype(np.float64) @ head.astype(np.float64)
    want_loss, want_weight = _optax_sums(logits, targets, mask, weights, smoothing)
    plain, _ = _optax_sums(logits, targets, mask, np.ones_like(weights), 0.0)
    keep = mask.astype(bool)
    assert float(out.loss_sum) == pytest.approx(want_loss, rel=1e-5)
    assert float(out.weight_sum) == pytest.approx(want_weight, rel=1e-6)
    assert float(out.ce_sum) == pytest.approx(plain, rel=1e-5)  # the unweighted, unsmoothed NLL
    assert float(out.count) == keep.sum()
    assert float(out.correct) == (logits.argmax(-1) == targets)[keep].sum()


def _tiny(tie=True):
    tok = demo_tokenizer("byte")
    cfg = DecoderConfig.from_hf(dict(
        model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tok) + 4, max_position_embeddings=64, rms_norm_eps=1e-6,
        tie_word_embeddings=tie, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id), source="test")
    return cfg, init_params(cfg, jax.random.PRNGKey(0)), tok


def _config(rank, smoothing=0.0):
    return ml_collections.ConfigDict(dict(
        seed=0, lora=dict(rank=rank, alpha=2.0 * rank, targets=("q_proj", "v_proj", "down_proj"), dropout=0.0),
        model=dict(compute_dtype="float32", remat="none"), loss=dict(chunk_size=0)))


def test_lm_loss_fn_shifts_weights_and_smooths_only_in_training():
    cfg, params, _ = _tiny()
    lm, trainable, frozen, _ = kit.tune(_config(0), cfg, params)
    lm = dataclasses.replace(lm, weights_key="w", label_smoothing=0.2)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, cfg.vocab_size, (2, 9)).astype(np.int32)
    loss_mask = np.ones_like(ids)
    loss_mask[0, :4] = 0
    w = rng.uniform(0.5, 2.0, ids.shape).astype(np.float32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask, "w": w}
    logits = np.asarray(forward(cfg, params, ids, batch["attention_mask"])[0], np.float64)[:, :-1]
    targets, keep, weights = ids[:, 1:], loss_mask[:, 1:], w[:, 1:]  # position i predicts token i + 1
    for rng_key, smoothing in ((jax.random.PRNGKey(0), 0.2), (None, 0.0)):
        loss_sum, weight_sum, metrics = lm.loss_fn()(trainable, frozen, batch, rng_key)
        want_loss, want_weight = _optax_sums(logits, targets, keep, weights, smoothing)
        assert float(loss_sum) == pytest.approx(want_loss, rel=1e-5)
        assert float(weight_sum) == pytest.approx(want_weight, rel=1e-6)
        assert float(metrics["accuracy_count"]) == keep.sum()


def test_the_global_batch_split_needs_one_example_per_process(monkeypatch):
    assert kit.per_process_batch_size(8) == 8
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    assert kit.per_process_batch_size(8) == 2
    with pytest.raises(ValueError, match=r"config key 'train\.batch_size'=2 is smaller than the 4 processes"):
        kit.per_process_batch_size(2)
    batches = kit.GlobalBatches(batch_size=3, seed=0, options={})
    with pytest.raises(ValueError, match="train.batch_size"):
        batches.train([{"input_ids": [1, 2]}])


def _trained(rank):
    """A tuned LM whose trainable tree moved away from its init (B != 0 under LoRA)."""
    cfg, params, tok = _tiny(tie=False)
    lm, trainable, frozen, _ = kit.tune(_config(rank), cfg, params, tok)
    trainable = jax.tree.map(lambda x: x + 0.05 * jnp.ones_like(x), trainable)
    return lm, trainable, frozen, tok


def _logits(cfg, params, ids):
    return np.asarray(forward(cfg, params, ids)[0])


@pytest.mark.parametrize("merged", [False, True])
def test_lora_export_loads_back_as_the_same_model(tmp_path, merged):
    lm, trainable, frozen, tok = _trained(rank=4)
    settings = {"dtype": "float32", "note": "kept"}
    kit.export_finetuned(tmp_path, lm, trainable, frozen, source=None, tokenizer=tok, tokenizer_in=("tokenizer",),
                         merged=merged, base=frozen["base"], settings=settings, settings_file="run.json")
    loaded = kit.load_finetuned(tmp_path, settings_file="run.json", need_tokenizer=True)
    assert isinstance(loaded, kit.Finetuned) and loaded.settings == settings
    assert loaded.cfg == lm.cfg and loaded.tokenizer.get_vocab() == tok.get_vocab()
    for want, got in zip(jax.tree.leaves(trainable["lora"]), jax.tree.leaves(loaded.adapters.params)):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
    ids = np.arange(3, 12, dtype=np.int32)[None]
    want = _logits(lm.cfg, lm.params(trainable, frozen), ids)
    np.testing.assert_allclose(_logits(loaded.cfg, loaded.tuned, ids), want, atol=1e-5)
    assert np.abs(want - _logits(lm.cfg, frozen["base"], ids)).max() > 1e-3  # the adapter matters
    if merged:  # the merged copy is the same model in one tree
        again = kit.load_finetuned(tmp_path, merged_first=True)
        assert again.adapters is None
        np.testing.assert_allclose(_logits(again.cfg, again.tuned, ids), want, atol=1e-5)


def test_full_export_loads_back_as_the_same_model(tmp_path):
    lm, trainable, frozen, tok = _trained(rank=0)
    assert lm.full and frozen == {}
    kit.export_finetuned(tmp_path, lm, trainable, frozen, source="somewhere", tokenizer=tok)
    assert not (tmp_path / "adapter").exists()
    loaded = kit.load_finetuned(tmp_path)
    assert loaded.adapters is None and loaded.settings == {} and loaded.tokenizer.get_vocab() == tok.get_vocab()
    for want, got in zip(jax.tree.leaves(trainable["model"]), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


def test_load_finetuned_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such export directory"):
        kit.load_finetuned(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no model/, adapter/ or merged/"):
        kit.load_finetuned(tmp_path)
    lm, trainable, frozen, _ = _trained(rank=4)
    kit.export_finetuned(tmp_path, lm, trainable, frozen, source=None)
    with pytest.raises(FileNotFoundError, match="names no base model"):
        kit.load_finetuned(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        kit.load_finetuned(tmp_path, need_tokenizer=True)
