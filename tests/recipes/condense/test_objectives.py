"""Objective layouts: where the markers and condensed states sit and which tokens carry loss, for the
AE, continuation and instruction objectives, against hand-built unpadded decoder sequences."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxft.models.decoder import embed, forward
from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense import objectives
from tests.recipes.condense.helpers import nll_mean, random_batch, states_of, tiny_condenser


@pytest.fixture(scope="module")
def setup():
    model, trainable, frozen = tiny_condenser()
    rs = np.random.RandomState(1)
    batch = random_batch(rs, p=9)  # M = 3 of S = 4 segments hold tokens
    batch["enc_mask"][0, 2, 2:] = False  # a partial last segment
    batch["enc_mask"][0, 3] = False
    batch["dec_mask"][0, 9:] = False
    batch["cont_mask"][0, 1, 3:] = False  # level 2 has 3 target tokens
    batch["cont_mask"][0, 3] = False  # level 4 does not exist (segment 3 is empty)
    batch["ins_mask"][0, 7:] = False  # 3 prompt tokens, 4 completion tokens, 2 padding
    batch["ins_loss"][0, 3:7] = True
    batch = jax.tree.map(jnp.asarray, batch)
    states = states_of(model, trainable, frozen, batch)
    cfg, dec_params = model.decoder, frozen["decoder"]
    logits = jax.jit(lambda x: forward(cfg, dec_params, inputs_embeds=x)[0])

    def direct(prefix, lead, targets, scored=None):
        """Mean NLL of ``targets[scored]`` for the unpadded row ``[prefix][lead][targets[:-1]]``."""
        parts = [prefix] + ([lead[None]] if lead is not None else []) + [embed(cfg, dec_params, targets[:-1])]
        x = jnp.concatenate(parts)
        # Trailing filler cannot reach earlier outputs (causal attention); one length, one compile.
        x = jnp.pad(x, ((0, 24 - len(x)), (0, 0)), constant_values=0.5)
        first = len(prefix) - (lead is None)
        out = logits(x[None])[0, first:first + len(targets)]
        scored = np.ones(len(targets), bool) if scored is None else scored
        return nll_mean(out[scored], np.asarray(targets)[scored])

    return model, trainable, frozen, batch, states, direct


def test_ae_layout(setup):
    model, trainable, frozen, batch, states, direct = setup
    valid = model_lib.segment_valid(batch["enc_mask"])
    h = model.decoder.hidden_size
    ae = jax.jit(functools.partial(objectives.ae_objective, model))(
        frozen["decoder"], states, valid, trainable["markers"]["ae"], batch["dec_ids"], batch["dec_mask"])
    # [states of the 3 valid segments][AE marker][context tokens]; the marker predicts token 0.
    expected = direct(states[0, :3].reshape(-1, h), trainable["markers"]["ae"], batch["dec_ids"][0, :9])
    np.testing.assert_allclose(float(ae.loss_sum), expected, rtol=1e-5)
    assert float(ae.count) == 9


def test_continuation_layout(setup):
    model, trainable, frozen, batch, states, direct = setup
    valid = model_lib.segment_valid(batch["enc_mask"])
    h, marker = model.decoder.hidden_size, trainable["markers"]["cont"]
    cont, texts_with_levels = jax.jit(functools.partial(objectives.continuation_objective, model))(
        frozen["decoder"], states, valid, marker, batch["cont_ids"], batch["cont_mask"])
    # Level i reads the states of segments < i, then the marker; levels 1..3 exist here.
    levels = [direct(states[0, :1].reshape(-1, h), marker, batch["cont_ids"][0, 0]),
              direct(states[0, :2].reshape(-1, h), marker, batch["cont_ids"][0, 1, :3]),
              direct(states[0, :3].reshape(-1, h), marker, batch["cont_ids"][0, 2])]
    np.testing.assert_allclose(float(cont.loss_sum), np.mean(levels), rtol=1e-5)
    assert float(texts_with_levels) == 1.0 and float(cont.count) == 5 + 3 + 5


def test_instruction_layout(setup):
    model, trainable, frozen, batch, states, direct = setup
    valid = model_lib.segment_valid(batch["enc_mask"])
    h = model.decoder.hidden_size
    ins = jax.jit(functools.partial(objectives.instruction_objective, model))(
        frozen["decoder"], states, valid, batch["ins_ids"], batch["ins_mask"], batch["ins_loss"])
    # [condensed context][prompt][completion], no marker; only the 4 completion tokens score.
    scored = np.asarray(batch["ins_loss"][0, :7])
    expected = direct(states[0, :3].reshape(-1, h), None, batch["ins_ids"][0, :7], scored)
    np.testing.assert_allclose(float(ins.loss_sum), expected, rtol=1e-5)
    assert float(ins.count) == 4


def test_objective_mix_is_weighted_per_text(setup):
    model, trainable, frozen, batch, states, direct = setup
    sums = {}
    for name in objectives.OBJECTIVES:
        fn = objectives.make_loss_fn(model, weights={name: 1.0}, chunk_size=None)
        sums[name] = float(jax.jit(fn)(trainable, frozen, batch, None)[0])
    mix = objectives.make_loss_fn(model, weights={"ae": 1.0, "continuation": 0.5, "instruction": 2.0},
                                  chunk_size=5)
    loss_sum, texts, metrics = jax.jit(mix)(trainable, frozen, batch, None)
    np.testing.assert_allclose(float(loss_sum), sums["ae"] + 0.5 * sums["continuation"] + 2 * sums["instruction"],
                               rtol=1e-5)
    assert float(texts) == 1 and {"ae_loss", "cont_loss", "ins_loss", "ins_correct_count"} <= set(metrics)
    with pytest.raises(ValueError, match="condense.objectives.reconstruct"):
        objectives.check_weights({"reconstruct": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        objectives.check_weights({"ae": 0.0})


def test_ae_loss_drops_with_frozen_decoder():
    """Only LoRA, condense tokens, projector and markers train; the decoder stays frozen."""
    model, trainable, frozen = tiny_condenser()
    batch = jax.tree.map(jnp.asarray, random_batch(np.random.RandomState(0), b=4, d=16))
    loss_fn = objectives.make_loss_fn(model, weights={"ae": 1.0, "continuation": 0.5}, chunk_size=7)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        def f(p):
            loss_sum, weight_sum, metrics = loss_fn(p, frozen, batch, None)
            return loss_sum / weight_sum, metrics

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, metrics

    opt_state = opt.init(trainable)
    history = []
    for _ in range(80):
        trainable, opt_state, m = step(trainable, opt_state)
        history.append((float(m["ae_loss"] / m["ae_loss_count"]), float(m["ae_correct"] / m["ae_correct_count"])))
    (first, acc0), (last, acc1) = history[0], history[-1]
    assert last < 0.4 * first, history[::10]
    assert acc1 > acc0 + 0.25, history[::10]
