"""The minigpt sampler's processors against a numpy transcription of the reference's per-token loop."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft
from jaxft.models import decoder
from jaxft.sampling import processors
from jaxft.sampling.config import SamplingConfig

V = 40


def _reference_probs(logits, ids, step, *, rep_penalty, temp, top_p, no_repeat, min_new, eos_id):
    """One step of the reference sampler in float64: the distribution it draws from (or its greedy pick)."""
    logits = np.asarray(logits, np.float64).copy()
    if rep_penalty != 1.0:
        for t in set(ids):
            logits[t] -= math.log(rep_penalty) * ids.count(t)
    log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    if temp <= 0:
        probs = np.zeros_like(logits)
        probs[np.argmax(log_probs)] = 1.0
    else:
        x = log_probs / temp
        probs = np.exp(x - x.max())
        probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        over = np.cumsum(probs[order]) > top_p
        if over.any():
            keep = order[: int(np.argmax(over)) + 1]
            filtered = np.zeros_like(probs)
            filtered[keep] = probs[keep]
            probs = filtered / filtered.sum()
    ban = set()
    if no_repeat > 0:
        ban.update(ids[-no_repeat:])
    if eos_id >= 0 and step < min_new:
        ban.add(eos_id)
    if ban:
        probs[list(ban)] = 0.0
        if probs.sum() == 0:
            fallback = logits.copy()
            fallback[list(ban)] = -1e30
            probs = np.zeros_like(probs)
            probs[int(np.argmax(fallback))] = 1.0
        else:
            probs /= probs.sum()
    return probs


@functools.cache
def _process(sampling, eos_id):
    return jax.jit(functools.partial(processors.process_logits, sampling, eos_ids=(eos_id,)))


def _ours(logits, ids, step, *, rep_penalty, temp, top_p, no_repeat, min_new, eos_id):
    sampling = SamplingConfig(max_new_tokens=max(min_new, 1) + 5, min_new_tokens=min_new, temperature=temp,
                              top_p=top_p, count_penalty=rep_penalty, ban_recent=no_repeat, ban_after_top_p=True)
    total = 20  # the history buffer is longer than the filled part, as in the loop (one shape: one compile)
    tokens = np.zeros((1, total), np.int32)
    tokens[0, : len(ids)] = ids
    valid = np.zeros((1, total), bool)
    valid[0, : len(ids)] = True
    out = _process(sampling, eos_id)(jnp.asarray(logits, jnp.float32)[None], jnp.asarray(tokens),
                                     jnp.asarray(valid), jnp.int32(len(ids)), jnp.int32(step))
    if sampling.greedy:
        probs = np.zeros(V)
        probs[int(np.argmax(np.asarray(out[0])))] = 1.0
        return probs
    return np.asarray(jax.nn.softmax(out[0].astype(jnp.float32)), np.float64)


SETTINGS = [
    dict(rep_penalty=1.2, temp=0.6, top_p=0.92, no_repeat=5, min_new=40, eos_id=3),  # the reference defaults
    dict(rep_penalty=1.2, temp=0.6, top_p=1.0, no_repeat=0, min_new=0, eos_id=3),
    dict(rep_penalty=2.0, temp=1.3, top_p=0.5, no_repeat=3, min_new=0, eos_id=3),
    dict(rep_penalty=1.0, temp=0.0, top_p=0.92, no_repeat=5, min_new=40, eos_id=3),  # greedy
    dict(rep_penalty=1.0, temp=0.8, top_p=0.2, no_repeat=8, min_new=0, eos_id=3),  # top-p set often all banned
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_step_distribution_matches_numpy_transcription(setting):
    rng = np.random.default_rng(0)
    fallbacks = 0
    for trial in range(30):
        logits = rng.standard_normal(V) * 3
        ids = [int(t) for t in rng.integers(0, V, rng.integers(3, 15))]
        if trial % 3 == 0:  # a strongly preferred recent token
            logits[ids[-1]] += 12
        step = int(rng.integers(0, 60))
        ref = _reference_probs(logits, ids, step, **setting)
        ours = _ours(logits, ids, step, **setting)
        fallbacks += int(ref.max() == 1.0)
        np.testing.assert_allclose(ours, ref, atol=2e-5)
    if setting["top_p"] == 0.2:
        assert fallbacks > 0  # the greedy fallback was exercised


def test_count_penalty_and_recent_ban_alone():
    logits = jnp.zeros((1, 6))
    tokens = jnp.asarray([[1, 2, 2, 5, 0, 0]])
    valid = jnp.asarray([[True, True, True, True, False, False]])
    out = np.asarray(processors.count_penalty(logits, tokens, valid, 2.0))
    np.testing.assert_allclose(out[0], [0, -math.log(2), -2 * math.log(2), 0, 0, -math.log(2)], rtol=1e-6)
    banned = np.asarray(processors.recent_tokens(tokens, valid, 4, 2, 6))
    np.testing.assert_array_equal(banned[0], [False, False, True, False, False, True])


def _tiny_model():
    from jaxft.models.config import DecoderConfig
    from jaxft.models.init import init_params
    from jaxft.recipes.minigpt.model import hf_config

    cfg = DecoderConfig.from_hf(hf_config(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, context=64,
                                          eos_token_id=3))
    return cfg, init_params(cfg, jax.random.key(0), std=0.3)


def test_greedy_loop_matches_reference_loop():
    """Inside the jitted loop: penalties, bans and the EOS rule equal a host loop over full forwards."""
    cfg, params = _tiny_model()
    prompt = [5, 9, 11, 9, 20]
    setting = dict(rep_penalty=1.5, temp=0.0, top_p=0.92, no_repeat=3, min_new=6, eos_id=3)
    sampling = SamplingConfig(max_new_tokens=12, min_new_tokens=6, temperature=0.0, top_p=0.92, count_penalty=1.5,
                              ban_recent=3, ban_after_top_p=True, eos_token_ids=(3,))
    out = jaxft.generate(cfg, params, np.asarray([prompt]), sampling)
    ids = list(prompt)
    # Causal attention: the logits at position n - 1 of a right-padded buffer are those of the n tokens alone.
    full = jax.jit(lambda buf: decoder.forward(cfg, params, buf)[0])
    for step in range(12):
        buf = np.zeros((1, len(prompt) + 12), np.int32)
        buf[0, : len(ids)] = ids
        probs = _reference_probs(np.asarray(full(jnp.asarray(buf))[0, len(ids) - 1]), ids, step, **setting)
        ids.append(int(np.argmax(probs)))
        if ids[-1] == 3 and step >= 6:
            break
    assert out.token_lists()[0] == ids[len(prompt):]


def test_sampled_loop_is_reproducible_and_respects_bans():
    cfg, params = _tiny_model()
    sampling = SamplingConfig(max_new_tokens=30, min_new_tokens=30, temperature=0.9, top_p=0.95, count_penalty=1.2,
                              ban_recent=4, ban_after_top_p=True, eos_token_ids=(3,))
    a = jaxft.generate(cfg, params, np.asarray([[5, 6, 7]]), sampling, seed=1).token_lists()[0]
    b = jaxft.generate(cfg, params, np.asarray([[5, 6, 7]]), sampling, seed=1).token_lists()[0]
    assert a == b and len(a) == 30 and 3 not in a
    full = [5, 6, 7] + a
    for i in range(3, len(full)):  # no token repeats one of the 4 before it
        assert full[i] not in full[max(0, i - 4):i]
