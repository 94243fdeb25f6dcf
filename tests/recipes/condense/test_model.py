"""The condenser's model parts: condense positions, the projector (against a torch transcription of the
reference's), the encoder's last two hidden states (the decoder's ``hidden_states=(-2, -1)``, checked against
transformers in tests/models/test_modules.py), segment independence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense import objectives
from tests.recipes.condense.helpers import ENC_VOCAB, N, SEGMENTS, random_batch, states_of, tiny_condenser


def test_condense_position_ids_exact():
    pos = np.asarray(model_lib.condense_position_ids(jnp.array([8, 5, 3, 0]), 8, 4))
    tokens = list(range(8))
    assert pos[0].tolist() == tokens + [1, 3, 5, 7]  # evenly spread, last on the last token
    assert pos[1].tolist() == tokens + [1, 2, 3, 4]  # ceil(5/4)-1, ceil(10/4)-1, ceil(15/4)-1, 5-1
    assert pos[2].tolist() == tokens + [0, 1, 2, 2]  # more condense tokens than tokens
    assert pos[3].tolist() == tokens + [0, 0, 0, 0]  # empty segment


@pytest.mark.parametrize("kind", ["reference", "linear_norm"])
def test_projector_matches_torch_transcription(kind):
    """Shapes, parameter names and the order of the two maps, against torch's LayerNorm and Linear
    holding the same weights (the reference's ``linear(norm(cat(hidden_states[-2:])))``)."""
    import torch

    h_in, h_out = (12, 5) if kind == "reference" else (6, 5)
    module = model_lib.Projector(features=h_out, kind=kind)
    params = module.init(jax.random.key(0), jnp.zeros((1, h_in)))["params"]
    norm_size = h_in if kind == "reference" else h_out
    assert params["linear"]["kernel"].shape == (h_in, h_out) and params["linear"]["bias"].shape == (h_out,)
    assert params["norm"]["scale"].shape == (norm_size,)
    # Xavier-uniform kernel bound sqrt(6 / (fan_in + fan_out)), zero bias.
    assert np.abs(np.asarray(params["linear"]["kernel"])).max() <= np.sqrt(6 / (h_in + h_out))
    assert not np.asarray(params["linear"]["bias"]).any()
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda x: jnp.asarray(rs.normal(size=x.shape).astype(np.float32)), params)
    x = rs.normal(size=(3, 4, h_in)).astype(np.float32) * 3 + 1
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(x)))

    linear = torch.nn.Linear(h_in, h_out)
    norm = torch.nn.LayerNorm(norm_size)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(np.asarray(params["linear"]["kernel"]).T))
        linear.bias.copy_(torch.tensor(np.asarray(params["linear"]["bias"])))
        norm.weight.copy_(torch.tensor(np.asarray(params["norm"]["scale"])))
        norm.bias.copy_(torch.tensor(np.asarray(params["norm"]["bias"])))
        t = torch.tensor(x)
        expected = linear(norm(t)) if kind == "reference" else norm(linear(t))
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_reference_states_are_the_last_two_hidden_states():
    """The reference projector reads [input to the last layer, final output] at the condense slots:
    its input width is 2 * H_enc and its second half is what ``forward`` returns there."""
    from jaxft.models.decoder import forward

    model, trainable, frozen = tiny_condenser("reference")
    batch = random_batch(np.random.RandomState(3), s=1)
    enc_params = model.encoder_params(trainable, frozen)
    pair = model_lib.encode_segments(model, trainable, enc_params, jnp.asarray(batch["enc_ids"]),
                                     jnp.asarray(batch["enc_mask"]))
    h = model.encoder.hidden_size
    assert pair.shape == (1, 1, N, 2 * h)
    x = jnp.concatenate([model_lib.embed(model.encoder, enc_params, jnp.asarray(batch["enc_ids"][:, 0])),
                         trainable["condense_tokens"][None]], axis=1)
    positions = model_lib.condense_position_ids(jnp.asarray([batch["enc_mask"][0, 0].sum()]), x.shape[1] - N, N)
    final, _ = forward(model.encoder, enc_params, inputs_embeds=x, position_ids=positions, output="hidden")
    np.testing.assert_allclose(pair[0, 0, :, h:], final[0, -N:], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(pair[0, 0, :, :h] - final[0, -N:]).max()) > 1e-2  # the first half is another state
    _, _, (before_last,) = forward(model.encoder, enc_params, inputs_embeds=x, position_ids=positions,
                                   output="hidden", hidden_states=(model.encoder.num_hidden_layers - 1,))
    np.testing.assert_allclose(pair[0, 0, :, :h], before_last[0, -N:], rtol=1e-5, atol=1e-5)


def test_decoder_inputs_and_level_prefixes():
    b, s, n, h = 2, 3, 2, 4
    states = jnp.arange(b * s * n * h, dtype=jnp.float32).reshape(b, s, n, h)
    seg_valid = jnp.array([[True, True, False], [True, False, False]])
    marker = jnp.full((h,), -1.0)
    tokens = jnp.full((b, 5, h), 7.0)
    token_mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    embeds, mask = model_lib.decoder_inputs(states.reshape(b, s * n, h), jnp.repeat(seg_valid, n, axis=1), marker,
                                            tokens, token_mask)
    assert embeds.shape == (b, s * n + 1 + 5, h)
    assert np.asarray(mask[0]).astype(int).tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(embeds[:, s * n], -1.0)  # the marker sits right after the states
    np.testing.assert_array_equal(embeds[1, 2], states[1, 1, 0])

    prefix, prefix_mask = objectives.level_prefix(states, seg_valid)
    assert prefix.shape == (b * s, s * n, h)
    # Text 0 has 2 valid segments: level 1 sees segment 0, levels 2 and 3 see segments 0 and 1.
    assert np.asarray(prefix_mask[:3]).astype(int).tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                                                                [1, 1, 1, 1, 0, 0]]
    np.testing.assert_array_equal(prefix[1], states[0].reshape(s * n, h))


@pytest.mark.parametrize("projector", ["reference", "linear_norm"])
def test_segments_are_encoded_independently_and_padding_is_inert(projector):
    model, trainable, frozen = tiny_condenser(projector)
    batch = random_batch(np.random.RandomState(2))
    batch["enc_mask"][0, 3, 3:] = False
    states = states_of(model, trainable, frozen, batch)
    assert states.shape == (1, SEGMENTS, N, model.decoder.hidden_size)
    order = [2, 0, 1, 3]
    shuffled = dict(batch, enc_ids=batch["enc_ids"][:, order], enc_mask=batch["enc_mask"][:, order])
    np.testing.assert_allclose(states_of(model, trainable, frozen, shuffled), states[:, order], atol=1e-5)
    padded = dict(batch, enc_ids=batch["enc_ids"].copy())
    padded["enc_ids"][0, 3, 3:] = 5
    np.testing.assert_allclose(states_of(model, trainable, frozen, padded), states, atol=1e-6)
    changed = dict(batch, enc_ids=batch["enc_ids"].copy())
    changed["enc_ids"][0, 1, 0] = (changed["enc_ids"][0, 1, 0] + 1) % ENC_VOCAB
    diff = np.abs(np.asarray(states_of(model, trainable, frozen, changed) - states)).max(axis=(0, 2, 3))
    assert diff[1] > 1e-3 and diff[[0, 2, 3]].max() < 1e-6


def test_bf16_remat_gives_the_loss_and_gradients_of_no_remat(monkeypatch):
    """The seed's setting (bfloat16 compute, remat "full" on the encoder's last-two-states scan and on the
    decoder): saving each layer's input as its bits (``saved_as_bits``) changes no bit of the loss or the
    trainable gradients, and both equal those without remat within bfloat16 rounding."""
    import dataclasses

    from jaxft.models import modules

    base, trainable, frozen = tiny_condenser("reference")
    batch = {k: jnp.asarray(v) for k, v in random_batch(np.random.RandomState(5), b=2).items()}

    def run(remat):
        model = dataclasses.replace(base, dtype=jnp.bfloat16, remat=remat, decoder_remat=remat)
        loss_fn = objectives.make_loss_fn(model, weights=dict(ae=1.0, continuation=1.0), chunk_size=0)
        value, grads = jax.jit(jax.value_and_grad(lambda t: loss_fn(t, frozen, batch, None)[0]))(trainable)
        return float(value), [np.asarray(g, np.float32) for g in jax.tree.leaves(grads)]

    value, grads = run("full")
    with monkeypatch.context() as m:
        m.setattr(modules, "saved_as_bits", lambda x, name=None: x)
        plain_value, plain_grads = run("full")
    assert value == plain_value
    for g, w in zip(grads, plain_grads):
        np.testing.assert_array_equal(g, w)
    want, want_grads = run("none")
    np.testing.assert_allclose(value, want, rtol=1e-6)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-2 * float(np.abs(w).max()))


def test_decoder_remat_group_gives_the_loss_and_gradients_of_per_layer_remat():
    """``decoder_remat_group`` (config ``decoder.remat_group``) checkpoints the decoder's layers in groups too:
    the condense loss and the trainable gradients stay those of one checkpoint per layer."""
    import dataclasses

    base, trainable, frozen = tiny_condenser("reference")
    batch = {k: jnp.asarray(v) for k, v in random_batch(np.random.RandomState(6), b=2).items()}
    results = []
    for group in (1, 2):
        model = dataclasses.replace(base, remat="full", decoder_remat="full", decoder_remat_group=group)
        loss_fn = objectives.make_loss_fn(model, weights=dict(ae=1.0, continuation=1.0), chunk_size=0)
        value_and_grad = jax.value_and_grad(lambda t: loss_fn(t, frozen, batch, None)[0])  # noqa: B023 - used at once
        results.append(jax.jit(value_and_grad)(trainable))
    (value, grads), (want, want_grads) = results[1], results[0]
    assert float(value) == float(want)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))
