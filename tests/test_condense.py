"""The condense recipe: positions, masks, level construction, cross-tokenizer mapping, learning, export."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxft import lora as lora_lib
from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import embed, forward
from jaxft.models.init import init_params
from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense import objectives
from jaxft.recipes.condense.data import (ExampleBuilder, Layout, decoder_segment_starts, example_fields,
                                         segment_char_starts)

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on mat a dog ran far away and then slept".split()


# -- helpers ---------------------------------------------------------------------------------------

def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace-split words; offsets exclude the spaces."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>"] + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def byte_tokenizer():
    from jaxft.tokenization.demo import demo_tokenizer

    return demo_tokenizer("byte")  # no training: one token per byte, offsets include spaces


def tiny_cfg(model_type: str, vocab: int, hidden: int = 64) -> DecoderConfig:
    return DecoderConfig.from_hf(dict(model_type=model_type, vocab_size=vocab, hidden_size=hidden,
                                      intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                                      eos_token_id=2, pad_token_id=0))


# One model shape for every test, so compiled programs are shared between them.
ENC_VOCAB, DEC_VOCAB = 16, 259  # the word tokenizer's 14 tokens fit; the byte tokenizer has 259
N, SEG_LEN, SEGMENTS = 2, 4, 4


@functools.cache
def tiny_condenser(decoder_std: float = 0.3, seed: int = 0):
    """(model, trainable, frozen) with a LoRA'd random encoder and a frozen random decoder.

    The decoder's larger init std makes its outputs react to its inputs, as a
    trained decoder's do; at 0.02 its logits hardly move whatever it reads.
    Built once per process (tests never modify the trees).
    """
    enc, dec = tiny_cfg("llama", ENC_VOCAB), tiny_cfg("mistral", DEC_VOCAB)
    lora_config = lora_lib.LoraConfig(rank=8, alpha=8.0)
    model = model_lib.CondenseModel(enc, dec, num_condense_tokens=N, segment_length=SEG_LEN, lora_config=lora_config)

    @jax.jit  # one compile instead of one per eager random op
    def trees(key):
        keys = jax.random.split(key, 5)
        enc_params = init_params(enc, keys[0])
        adapters = lora_lib.init(keys[1], enc, enc_params, rank=lora_config.rank, alpha=lora_config.alpha)
        # b = 0 would make the LoRA a no-op; random b makes the adapters matter in every test.
        lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(keys[4], x.shape), adapters.params)
        trainable = {"lora": lora, **model_lib.init_params(keys[2], model, 0.3)}
        return trainable, {"encoder": enc_params, "decoder": init_params(dec, keys[3], std=decoder_std)}

    trainable, frozen = trees(jax.random.key(seed))
    return model, trainable, frozen


def random_batch(rs, b=1, s=SEGMENTS, d=12, c=5):
    return dict(enc_ids=rs.randint(3, ENC_VOCAB, (b, s, SEG_LEN)).astype(np.int32),
                enc_mask=np.ones((b, s, SEG_LEN), bool),
                dec_ids=rs.randint(3, DEC_VOCAB, (b, d)).astype(np.int32), dec_mask=np.ones((b, d), bool),
                cont_ids=rs.randint(3, DEC_VOCAB, (b, s - 1, c)).astype(np.int32),
                cont_mask=np.ones((b, s - 1, c), bool))


def states_of(model, trainable, frozen, batch) -> jnp.ndarray:
    return model_lib.condense_jit(model, trainable, frozen, jnp.asarray(batch["enc_ids"]),
                                  jnp.asarray(batch["enc_mask"]))


def nll_mean(logits: jnp.ndarray, targets: np.ndarray) -> float:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return float(-jnp.mean(jnp.take_along_axis(logp, jnp.asarray(targets)[:, None], axis=-1)))


# -- positions, masks, levels ---------------------------------------------------------------------

def test_condense_position_ids_exact():
    pos = np.asarray(model_lib.condense_position_ids(jnp.array([8, 5, 3, 0]), 8, 4))
    tokens = list(range(8))
    assert pos[0].tolist() == tokens + [1, 3, 5, 7]  # evenly spread, last on the last token
    assert pos[1].tolist() == tokens + [1, 2, 3, 4]  # ceil(5/4)-1, ceil(10/4)-1, ceil(15/4)-1, 5-1
    assert pos[2].tolist() == tokens + [0, 1, 2, 2]  # more condense tokens than tokens
    assert pos[3].tolist() == tokens + [0, 0, 0, 0]  # empty segment
    two = np.asarray(model_lib.condense_position_ids(jnp.array([5]), 8, 2))[0]
    assert two[8:].tolist() == [2, 4]


def test_decoder_inputs_shapes_and_masks():
    b, s, n, h = 2, 3, 2, 4
    states = jnp.arange(b * s * n * h, dtype=jnp.float32).reshape(b, s, n, h)
    seg_valid = jnp.array([[True, True, False], [True, False, False]])
    marker = jnp.full((h,), -1.0)
    tokens = jnp.full((b, 5, h), 7.0)
    token_mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    embeds, mask = model_lib.decoder_inputs(states.reshape(b, s * n, h), jnp.repeat(seg_valid, n, axis=1), marker,
                                            tokens, token_mask)
    assert embeds.shape == (b, s * n + 1 + 5, h) and mask.shape == (b, s * n + 1 + 5)
    assert np.asarray(mask[0]).astype(int).tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0]
    assert np.asarray(mask[1]).astype(int).tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(embeds[:, s * n], -1.0)  # the marker sits right after the states
    np.testing.assert_array_equal(embeds[1, 2], states[1, 1, 0])  # segment 1's first state
    np.testing.assert_array_equal(embeds[:, s * n + 1:], 7.0)

    prefix, prefix_mask = objectives.level_prefix(states, seg_valid)
    assert prefix.shape == (b * (s - 1), (s - 1) * n, h)
    # Text 0 has 2 valid segments: level 1 sees segment 0, level 2 sees segments 0 and 1.
    assert np.asarray(prefix_mask).astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    np.testing.assert_array_equal(prefix[1], states[0, :2].reshape(4, h))


def test_continuation_levels_for_three_segments():
    # Ten decoder tokens; segments start at decoder tokens 0, 4 and 7; room for 3 levels (S=4).
    dec_ids = np.arange(10, 20, dtype=np.int32)
    ids, mask = objectives.continuation_targets(np.pad(dec_ids, (0, 6)), 10, np.array([0, 4, 7]), num_segments=3,
                                                num_levels=3, max_continuation_tokens=5)
    assert ids.tolist() == [[14, 15, 16, 17, 18], [17, 18, 19, 0, 0], [0, 0, 0, 0, 0]]
    assert mask.astype(int).tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_level_and_ae_losses_match_unpadded_sequences():
    """The padded, batched objectives equal the per-level losses of hand-built, unpadded
    ``[states of segments < i][marker][targets[:-1]]`` sequences -- which fixes which tokens
    are inputs, which are targets and which carry loss."""
    model, trainable, frozen = tiny_condenser()
    rs = np.random.RandomState(1)
    batch = random_batch(rs)  # M = 3 of S = 4 segments hold tokens
    batch["enc_mask"][0, 2, 2:] = False  # a partial last segment
    batch["enc_mask"][0, 3] = False
    batch["dec_mask"][0, 9:] = False
    batch["cont_mask"][0, 1, 3:] = False  # level 2 has 3 target tokens
    batch["cont_mask"][0, 2] = False  # level 3 does not exist
    batch = jax.tree.map(jnp.asarray, batch)
    states = states_of(model, trainable, frozen, batch)
    valid = model_lib.segment_valid(batch["enc_mask"])
    dec_params, markers, cfg = frozen["decoder"], trainable["markers"], model.decoder
    decoder_logits = jax.jit(lambda x: forward(cfg, dec_params, inputs_embeds=x)[0])

    def direct(prefix, marker, targets):
        x = jnp.concatenate([prefix, marker[None], embed(cfg, dec_params, jnp.asarray(targets[:-1]))])
        # Trailing filler cannot reach earlier outputs (causal attention); one length, one compile.
        x = jnp.pad(x, ((0, 24 - len(x)), (0, 0)), constant_values=0.5)
        return nll_mean(decoder_logits(x[None])[0, len(prefix):len(prefix) + len(targets)], targets)

    h = cfg.hidden_size
    cont, texts_with_levels = jax.jit(functools.partial(objectives.continuation_objective, model))(
        dec_params, states, valid, markers["cont"], batch["cont_ids"], batch["cont_mask"])
    level1 = direct(states[0, :1].reshape(-1, h), markers["cont"], np.asarray(batch["cont_ids"][0, 0]))
    level2 = direct(states[0, :2].reshape(-1, h), markers["cont"], np.asarray(batch["cont_ids"][0, 1, :3]))
    np.testing.assert_allclose(float(cont.loss_sum), (level1 + level2) / 2, rtol=1e-5)
    assert float(texts_with_levels) == 1.0 and float(cont.count) == 5 + 3

    ae = jax.jit(functools.partial(objectives.ae_objective, model))(dec_params, states, valid, markers["ae"],
                                                                   batch["dec_ids"], batch["dec_mask"])
    expected = direct(states[0, :3].reshape(-1, h), markers["ae"], np.asarray(batch["dec_ids"][0, :9]))
    np.testing.assert_allclose(float(ae.loss_sum), expected, rtol=1e-5)
    assert float(ae.count) == 9


def test_segments_are_encoded_independently_and_padding_is_inert():
    model, trainable, frozen = tiny_condenser()
    batch = random_batch(np.random.RandomState(2))
    batch["enc_mask"][0, 3, 3:] = False
    states = states_of(model, trainable, frozen, batch)
    assert states.shape == (1, SEGMENTS, N, model.decoder.hidden_size)
    # Reordering segments reorders their states and nothing else: one segment never sees another.
    order = [2, 0, 1, 3]
    shuffled = dict(batch, enc_ids=batch["enc_ids"][:, order], enc_mask=batch["enc_mask"][:, order])
    np.testing.assert_allclose(states_of(model, trainable, frozen, shuffled), states[:, order], atol=1e-5)
    # Changing padded token ids changes nothing.
    padded = dict(batch, enc_ids=batch["enc_ids"].copy())
    padded["enc_ids"][0, 3, 3:] = 5
    np.testing.assert_allclose(states_of(model, trainable, frozen, padded), states, atol=1e-6)
    # ... but a real token does change its segment's states.
    changed = dict(batch, enc_ids=batch["enc_ids"].copy())
    changed["enc_ids"][0, 1, 0] = (changed["enc_ids"][0, 1, 0] + 1) % ENC_VOCAB
    diff = np.abs(np.asarray(states_of(model, trainable, frozen, changed) - states)).max(axis=(0, 2, 3))
    assert diff[1] > 1e-3 and diff[[0, 2, 3]].max() < 1e-6


# -- data ------------------------------------------------------------------------------------------

def test_cross_tokenizer_segment_mapping_mid_word():
    # Encoder: one token per character; decoder: whole words. Segments of 5 characters cut
    # "cat" and "sat" in the middle; the word covering a segment's first character starts it.
    text = "the cat sat"
    enc_off = np.asarray(byte_tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    dec_off = np.asarray(word_tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    starts = segment_char_starts(enc_off, 5)
    assert starts.tolist() == [0, 5, 10]
    assert decoder_segment_starts(dec_off, starts).tolist() == [0, 1, 2]


def test_example_builder_cross_tokenizer():
    layout = Layout.create(num_condense_tokens=2, compression_ratio=2.0, max_tokens=12, max_decoder_tokens=80,
                           max_continuation_tokens=10, max_characters=1000)
    assert (layout.segment_length, layout.max_segments) == (4, 3)
    byte = byte_tokenizer()
    ex = ExampleBuilder(word_tokenizer(), byte, layout)("the cat sat on the mat and then a dog ran far away")
    # 12 words -> 3 full segments; the text is cut after "far" (the 12th encoder token).
    assert int(ex["num_segments"]) == 3 and ex["enc_mask"].all()
    assert byte.decode(ex["dec_ids"][ex["dec_mask"]]) == "the cat sat on the mat and then a dog ran far"
    # Level 1 starts at segment 1 ("the mat ..."): the space before it stays with segment 0.
    assert byte.decode(ex["cont_ids"][0][ex["cont_mask"][0]]) == "the mat an"
    assert byte.decode(ex["cont_ids"][1][ex["cont_mask"][1]]) == "a dog ran "
    assert ex["cont_ids"].shape == (2, 10) and ex["enc_ids"].shape == (3, 4) and ex["dec_ids"].shape == (80,)


def test_example_builder_fits_both_budgets():
    layout = Layout.create(num_condense_tokens=2, compression_ratio=2.0, max_tokens=12, max_decoder_tokens=20,
                           max_continuation_tokens=8, max_characters=1000)
    byte = byte_tokenizer()
    ex = ExampleBuilder(word_tokenizer(), byte, layout)("the cat sat on the mat and then a dog ran far away")
    # 20 bytes end inside "mat"; the text is cut at the byte budget and both sides agree on it.
    assert byte.decode(ex["dec_ids"][ex["dec_mask"]]) == "the cat sat on the m"
    assert int(ex["enc_mask"].sum()) == 6 and int(ex["num_segments"]) == 2
    with pytest.raises(ValueError, match="no tokens"):
        ExampleBuilder(word_tokenizer(), byte, layout)("   ")


def condense_batches(records, example_fn, layout=None, **kw):
    from jaxft.data import make_batches

    return make_batches(records, example_fn=example_fn, fields=example_fields(layout or example_fn.layout),
                        shard_index=0, shard_count=1, **kw)


def test_batches_fill_and_resume():
    layout = Layout.create(num_condense_tokens=2, compression_ratio=2.0, max_tokens=8, max_decoder_tokens=40,
                           max_continuation_tokens=4, max_characters=200)
    builder = ExampleBuilder(word_tokenizer(), byte_tokenizer(), layout)
    texts = ["the cat sat on the mat", "a dog ran far away", "and then slept", "the dog sat"]
    batches = list(condense_batches(texts, builder, batch_size=3, shuffle=False, num_epochs=1))
    assert len(batches) == 2 and batches[1]["enc_ids"].shape == (3, 2, 4)
    assert batches[1]["dec_mask"].sum(-1).tolist()[1:] == [0, 0]  # filled-up rows carry nothing
    assert batches[1]["dec_mask"].dtype == bool and batches[1]["num_segments"].tolist() == [1, 0, 0]
    it = condense_batches(texts, builder, batch_size=2, seed=3, num_epochs=None)
    next(it)
    state = it.get_state()
    expected = next(it)
    resumed = condense_batches(texts, builder, batch_size=2, seed=3, num_epochs=None)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["dec_ids"], expected["dec_ids"])


def test_bad_settings_are_named():
    from jaxft.recipes.condense.recipe import load_tokenizer

    with pytest.raises(ValueError, match="condense.compression_ratio"):
        Layout.create(num_condense_tokens=4, compression_ratio=0.0, max_tokens=16, max_decoder_tokens=16,
                      max_continuation_tokens=4, max_characters=100)
    with pytest.raises(ValueError, match="condense.max_continuation_tokens"):
        Layout.create(num_condense_tokens=4, compression_ratio=2.0, max_tokens=16, max_decoder_tokens=16,
                      max_continuation_tokens=0, max_characters=100)
    with pytest.raises(ValueError, match="condense.encoder_tokenizer.*demo:<kind>"):
        load_tokenizer("demo:bpe:many", "", "encoder")
    with pytest.raises(ValueError, match="'condense.decoder_tokenizer' is empty and so is 'condense.decoder'"):
        load_tokenizer("", "", "decoder")
    layout = Layout.create(num_condense_tokens=2, compression_ratio=2.0, max_tokens=8, max_decoder_tokens=40,
                           max_continuation_tokens=4, max_characters=200)
    builder = ExampleBuilder(word_tokenizer(), byte_tokenizer(), layout)
    with pytest.raises(ValueError, match="record 1: .*has no column 'text'"):
        list(condense_batches([{"text": "the cat"}, {"body": "a dog"}], builder.record_fn("text"), builder.layout, batch_size=2,
                              shuffle=False, num_epochs=1))


# -- learning, export ------------------------------------------------------------------------------

def test_ae_loss_drops_with_frozen_decoder():
    """Only LoRA, condense tokens, projector and markers train; the decoder stays frozen."""
    model, trainable, frozen = tiny_condenser()
    batch = jax.tree.map(jnp.asarray, random_batch(np.random.RandomState(0), b=4, d=16))
    loss_fn = objectives.make_loss_fn(model, continuation_weight=0.5, chunk_size=7)
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
    assert last < 0.4 * first, history[::10]  # measured: 8.2 -> 2.6
    assert acc1 > acc0 + 0.25, history[::10]  # measured: 0.02 -> 0.45


EXPORT_TEXT = "the cat sat on the mat and then a dog ran"  # 10 words: 3 segments, the last one partial


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(condenser, export directory) of the tiny condenser with word/byte tokenizers."""
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser

    byte, words = byte_tokenizer(), word_tokenizer()
    assert len(words) <= ENC_VOCAB and len(byte) == DEC_VOCAB
    model, trainable, frozen = tiny_condenser()
    layout = Layout(num_condense_tokens=N, segment_length=SEG_LEN, max_segments=SEGMENTS, max_decoder_tokens=64,
                    max_continuation_tokens=8, max_characters=500)
    condenser = Condenser(model, layout, trainable, frozen, words, byte)
    directory = export_condenser(tmp_path_factory.mktemp("condenser") / "export", condenser)
    return condenser, directory


def test_export_reload_gives_identical_states(exported):
    from jaxft.recipes.condense.inference import load_condenser

    condenser, directory = exported
    before = condenser.compress(EXPORT_TEXT)
    assert before.shape == (3 * N, condenser.model.decoder.hidden_size)
    assert {p.name for p in directory.iterdir()} >= {
        "condenser.json", "condenser.safetensors", "adapter", "encoder", "decoder", "encoder_tokenizer",
        "decoder_tokenizer"}
    loaded = load_condenser(directory)
    np.testing.assert_allclose(loaded.compress(EXPORT_TEXT), before, atol=1e-6)
    np.testing.assert_array_equal(loaded.compress(EXPORT_TEXT, num_segments=2), before[:2 * N])
    generated = condenser.generate(before, mode="reconstruct", max_new_tokens=6, stop_at_eos=False)
    assert generated and loaded.generate(before, mode="reconstruct", max_new_tokens=6, stop_at_eos=False) == generated


def test_export_of_nf4_encoder_reloads_quantized(tmp_path):
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser, load_condenser

    model, trainable, frozen = tiny_condenser()
    quantized = dict(frozen, encoder=lora_lib.quantize(frozen["encoder"], model.encoder, fmt="nf4"))
    layout = Layout(num_condense_tokens=N, segment_length=SEG_LEN, max_segments=SEGMENTS, max_decoder_tokens=64,
                    max_continuation_tokens=8, max_characters=500)
    condenser = Condenser(model, layout, trainable, quantized, word_tokenizer(), byte_tokenizer())
    export_condenser(tmp_path, condenser, quantize_encoder="nf4")
    before = condenser.compress(EXPORT_TEXT)
    # Re-quantizing the bundled (dequantized) weights gives back the same codes: identical states.
    np.testing.assert_allclose(load_condenser(tmp_path).compress(EXPORT_TEXT), before, atol=1e-6)
    plain = load_condenser(tmp_path, quantize=False)
    assert type(plain.frozen["encoder"]["model"]["layers"]["mlp"]["up_proj"]["kernel"]).__name__ != "QuantizedKernel"


def test_cli_compress_then_generate(exported, tmp_path, capsys):
    from jaxft.recipes.condense.cli import main

    condenser, directory = exported
    out = tmp_path / "states.npy"
    assert main(["compress", "--condenser", str(directory), "--text", EXPORT_TEXT, "--segments", "2",
                 "--out", str(out)]) == 0
    states = np.load(out)
    np.testing.assert_allclose(states, condenser.compress(EXPORT_TEXT)[:2 * N], atol=1e-6)
    capsys.readouterr()
    assert main(["generate", "--condenser", str(directory), "--compressed", str(out), "--prompt", "the",
                 "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed == condenser.generate(states, "the", max_new_tokens=5)
    assert main(["generate", "--condenser", str(tmp_path / "missing")]) == 2
    assert "give --compressed, --text or --file" in capsys.readouterr().err


def test_export_rejects_mismatched_weights(exported, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from jaxft.recipes.condense.inference import load_condenser

    _, directory = exported
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    weights = load_file(str(broken / "condenser.safetensors"))
    weights["projector.kernel"] = weights["projector.kernel"][:, :-1]
    save_file(weights, str(broken / "condenser.safetensors"))
    with pytest.raises(ValueError, match="condenser.safetensors: tensor 'projector.kernel' has shape"):
        load_condenser(broken)


def test_test_preset_with_local_checkpoints_nf4_bf16(tmp_path):
    """The ``test`` preset on local checkpoints: tokenizers from the model dirs, an untied encoder's
    unused lm_head dropped, an NF4 encoder base, bfloat16 compute; the loss is finite and starts
    near ln(vocab) per token."""
    import dataclasses

    from jaxft.checkpoint.hf import save_pretrained
    from jaxft.recipes.condense import recipe
    from tests.configs import recipe_config

    byte = byte_tokenizer()
    enc = dataclasses.replace(tiny_cfg("llama", DEC_VOCAB), tie_word_embeddings=False)
    dec = tiny_cfg("mistral", DEC_VOCAB)
    save_pretrained(tmp_path / "enc", enc, init_params(enc, jax.random.key(0)), tokenizer=byte)
    save_pretrained(tmp_path / "dec", dec, init_params(dec, jax.random.key(1)), tokenizer=byte)
    config = recipe_config("condense", "test")
    config.condense.encoder, config.condense.decoder = str(tmp_path / "enc"), str(tmp_path / "dec")
    config.condense.quantize_encoder, config.condense.dtype = "nf4", "bfloat16"
    config.condense.num_condense_tokens, config.condense.max_tokens = 8, 64
    parts = recipe.build_parts(config)
    encoder = parts["frozen"]["encoder"]
    assert "lm_head" not in encoder and type(encoder["model"]["layers"]["mlp"]["up_proj"]["kernel"]).__name__ == \
        "QuantizedKernel"
    assert sorted(parts["trainable"]) == ["condense_tokens", "lora", "markers", "projector"]
    layout = parts["layout"]
    assert (layout.segment_length, layout.max_segments) == (16, 4)
    builder = ExampleBuilder(parts["encoder_tokenizer"], parts["decoder_tokenizer"], layout)
    texts = ["Condensed states stand in for the text they summarise. " * 3, "A short one."]
    batch = {k: np.stack([builder(t)[k] for t in texts]) for k in builder(texts[0])}
    loss_fn = jax.jit(objectives.make_loss_fn(parts["model"], continuation_weight=0.0, chunk_size=32))
    loss_sum, weight_sum, metrics = loss_fn(parts["trainable"], parts["frozen"], batch, None)
    assert float(weight_sum) == 2 and int(metrics["ae_correct_count"]) == 64 + 12
    per_text = float(metrics["ae_loss"]) / 2
    assert abs(per_text - np.log(DEC_VOCAB)) < 0.5, per_text


# -- the demo through the engine -----------------------------------------------------------------

@pytest.mark.skipif(not (ROOT / "jaxft" / "main.py").exists(), reason="the training engine is not there yet")
def test_demo_preset_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxft.main", "--config", str(ROOT / "configs" / "condense.py") + ":demo",
           "--config.train.steps=8", "--config.train.log_every=1", "--config.train.eval_every=8",
           "--config.train.eval_batches=1", "--config.condense.samples.max_new_tokens=8",
           "--config.optim.schedule.warmup_steps=1", "--config.checkpoint.async_save=False",
           f"--workdir={workdir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "condense demo" in proc.stdout.splitlines()[0] and "configs/condense.py:seed" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("train loss:"))
    first, last = float(line.split()[2]), float(line.split()[-3])
    assert last < first, line
    # The same validation batch before and after 8 steps (measured: 6.95 -> 6.22).
    before, after = map(float, re.search(r"ae_loss ([\d.]+) \(step 0\) -> ([\d.]+) \(step 8\)", out).groups())
    assert after < before - 0.4, (before, after)
    # The demo evaluates once before training: decoded samples from the condensed states.
    assert "[reconstruction]" in out and "[continuation]" in out and "step 0: eval" in out
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
    export = workdir / "export"
    assert (export / "condenser.json").exists() and (export / "adapter" / "adapter_model.safetensors").exists()
