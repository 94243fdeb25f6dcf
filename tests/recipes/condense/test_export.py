"""A condenser on disk and back: identical states, quantized bases, the CLI, broken exports."""

from __future__ import annotations

import numpy as np
import pytest

from jaxft import lora as lora_lib
from jaxft.recipes.condense.data import Layout
from tests.recipes.condense.helpers import DEC_VOCAB, ENC_VOCAB, N, SEG_LEN, SEGMENTS, byte_tokenizer, \
    tiny_condenser, word_tokenizer

EXPORT_TEXT = "the cat sat on the mat and then a dog ran"  # 10 words: 3 segments, the last one partial
LAYOUT = Layout(num_condense_tokens=N, segment_length=SEG_LEN, max_segments=SEGMENTS, max_decoder_tokens=64,
                max_continuation_tokens=8, max_characters=500)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(condenser, export directory) of the tiny condenser with word/byte tokenizers."""
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser

    byte, words = byte_tokenizer(), word_tokenizer()
    assert len(words) <= ENC_VOCAB and len(byte) == DEC_VOCAB
    model, trainable, frozen = tiny_condenser()
    condenser = Condenser(model, LAYOUT, trainable, frozen, words, byte)
    directory = export_condenser(tmp_path_factory.mktemp("condenser") / "export", condenser)
    return condenser, directory


def test_export_reload_gives_identical_states(exported):
    from jaxft.recipes.condense import load_export

    condenser, directory = exported
    before = condenser.compress(EXPORT_TEXT)
    assert before.shape == (3 * N, condenser.model.decoder.hidden_size)
    assert {p.name for p in directory.iterdir()} >= {
        "condenser.json", "condenser.safetensors", "adapter", "encoder", "decoder", "encoder_tokenizer",
        "decoder_tokenizer"}
    loaded = load_export(str(directory))
    assert loaded.model.projector == "reference"
    np.testing.assert_allclose(loaded.compress(EXPORT_TEXT), before, atol=1e-6)
    np.testing.assert_array_equal(loaded.compress(EXPORT_TEXT, num_segments=2), before[:2 * N])
    generated = condenser.generate(before, mode="reconstruct", max_new_tokens=6, stop_at_eos=False)
    assert generated and loaded.generate(before, mode="reconstruct", max_new_tokens=6, stop_at_eos=False) == generated


def test_export_of_nf4_encoder_reloads_quantized(tmp_path):
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser, load_condenser

    model, trainable, frozen = tiny_condenser("linear_norm")
    quantized = dict(frozen, encoder=lora_lib.quantize(frozen["encoder"], model.encoder, fmt="nf4"))
    condenser = Condenser(model, LAYOUT, trainable, quantized, word_tokenizer(), byte_tokenizer())
    export_condenser(tmp_path, condenser, quantize_encoder="nf4")
    before = condenser.compress(EXPORT_TEXT)
    # Re-quantizing the bundled (dequantized) weights gives back the same codes: identical states.
    reloaded = load_condenser(tmp_path)
    assert reloaded.model.projector == "linear_norm"
    np.testing.assert_allclose(reloaded.compress(EXPORT_TEXT), before, atol=1e-6)
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
    weights["projector.linear.kernel"] = weights["projector.linear.kernel"][:, :-1]
    save_file(weights, str(broken / "condenser.safetensors"))
    with pytest.raises(ValueError, match="condenser.safetensors: tensor 'projector.linear.kernel' has shape"):
        load_condenser(broken)
    (broken / "condenser.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="condenser.safetensors: not a readable safetensors file"):
        load_condenser(broken)


def test_no_context_baseline_reads_only_a_start_token(exported):
    """The evaluation's baseline scores the same targets from ``[start][targets[:-1]]``: equal to the
    decoder's own next-token loss on ``[start] + targets``."""
    import jax
    import jax.numpy as jnp

    from jaxft.models.decoder import forward
    from jaxft.recipes.condense.evaluate import compare, no_context_sums
    from tests.recipes.condense.helpers import nll_mean

    condenser, _ = exported
    model = condenser.model
    example = condenser.builder(EXPORT_TEXT)
    batch = {k: jnp.asarray(v[None]) for k, v in example.items()}
    dec = condenser.frozen["decoder"]
    sums = no_context_sums(model, dec, 2, batch)
    targets = example["dec_ids"][example["dec_mask"]]
    logits, _ = forward(model.decoder, dec, jnp.asarray(np.concatenate([[2], targets[:-1]])[None]))
    np.testing.assert_allclose(float(sums["ae_loss"]), nll_mean(logits[0], targets), rtol=1e-5)
    result = compare(condenser, [EXPORT_TEXT, "the cat sat on the mat"], batch_size=4)
    assert set(result) == {"condensed", "no_context"}
    assert result["no_context"]["ae_loss"] != pytest.approx(result["condensed"]["ae_loss"])
    assert jax.tree.all(jax.tree.map(np.isfinite, result))
