"""The recipe's build: local checkpoints through the shared loaders (NF4 encoder, bfloat16), instruction
records through the batches, and the demo preset end to end through the CLI."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxft.models.init import init_params
from jaxft.recipes.condense import objectives
from jaxft.recipes.condense.data import ExampleBuilder
from tests.configs import recipe_config
from tests.recipes.condense.helpers import DEC_VOCAB, byte_tokenizer, tiny_cfg

ROOT = Path(__file__).resolve().parents[3]


def test_test_preset_with_local_checkpoints_nf4_bf16(tmp_path):
    """Tokenizers from the model dirs, an untied encoder's unused lm_head dropped, an NF4 encoder base,
    bfloat16 compute; the loss is finite and starts near ln(vocab) per token."""
    from jaxft.checkpoint.hf import save_pretrained
    from jaxft.recipes.condense import recipe

    byte = byte_tokenizer()
    enc = dataclasses.replace(tiny_cfg("llama", DEC_VOCAB), tie_word_embeddings=False)
    dec = tiny_cfg("mistral", DEC_VOCAB)
    save_pretrained(tmp_path / "enc", enc, init_params(enc, jax.random.key(0)), tokenizer=byte)
    save_pretrained(tmp_path / "dec", dec, init_params(dec, jax.random.key(1)), tokenizer=byte)
    config = recipe_config("condense", "test")
    config.encoder.path, config.decoder.path = str(tmp_path / "enc"), str(tmp_path / "dec")
    config.encoder.quantize = "nf4"
    for section in (config.encoder, config.decoder):
        section.compute_dtype = "bfloat16"
    config.condense.max_tokens, config.condense.max_decoder_tokens = 64, 128
    parts = recipe.build_parts(config)
    encoder = parts["frozen"]["encoder"]
    assert "lm_head" not in encoder and type(encoder["model"]["layers"]["mlp"]["up_proj"]["kernel"]).__name__ == \
        "QuantizedKernel"
    assert sorted(parts["trainable"]) == ["condense_tokens", "lora", "markers", "projector"]
    layout = parts["layout"]
    assert (layout.num_condense_tokens, layout.segment_length, layout.max_segments) == (4, 32, 2)
    builder = ExampleBuilder(parts["encoder_tokenizer"], parts["decoder_tokenizer"], layout)
    texts = ["Condensed states stand in for the text they summarise. " * 3, "A short one."]
    batch = {k: np.stack([builder(t)[k] for t in texts]) for k in builder(texts[0])}
    loss_fn = jax.jit(objectives.make_loss_fn(parts["model"], weights={"ae": 1.0}, chunk_size=32))
    loss_sum, weight_sum, metrics = loss_fn(parts["trainable"], parts["frozen"], batch, None)
    # Text 0's 165 bytes: 64 condensed (the AE target), the other 101 its remainder; text 1 is 12 bytes.
    assert float(weight_sum) == 2 and int(metrics["ae_correct_count"]) == 64 + 12
    per_text = float(metrics["ae_loss"]) / 2
    assert abs(per_text - np.log(DEC_VOCAB)) < 0.5, per_text
    assert int(builder(texts[0])["cont_mask"].sum(-1)[1]) == 64  # the remainder, capped at 64


def test_instruction_records_through_build(tmp_path):
    from jaxft.recipes.condense import build

    rows = [{"context": f"Record {i}: the quick brown fox jumps over the lazy dog, then naps for {i} hours.",
             "activation_prompt": " How long does the fox nap?", "expected_completion": f" {i} hours."}
            for i in range(12)]
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = recipe_config("condense", "smoke")
    config.data.path = str(data)
    config.condense.objectives.update(dict(ae=0.0, continuation=0.0, instruction=1.0))
    config.condense.instruction.update(dict(max_prompt_tokens=32, max_completion_tokens=12))
    task = build(config, None)
    batch = next(task.train_batches)
    # Bytes: the completion " <i> hours." is 9 or 10 tokens, all scored; the prompt none.
    assert batch["ins_ids"].shape == (2, 44) and set(batch["ins_loss"].sum(-1).tolist()) <= {9, 10}
    assert (batch["ins_mask"].sum(-1) - batch["ins_loss"].sum(-1)).tolist() == [len(" How long does the fox nap?")] * 2
    loss_sum, weight_sum, metrics = jax.jit(task.loss_fn)(task.trainable, task.frozen, batch, None)
    assert set(metrics) == {"ins_loss", "ins_loss_count", "ins_correct", "ins_correct_count"}
    assert np.isfinite(float(loss_sum)) and float(weight_sum) == 2
    np.testing.assert_allclose(float(loss_sum), float(metrics["ins_loss"]), rtol=1e-6)
    assert "objectives instruction x1" in task.description


class CountingTokenizer:
    """A tokenizer that counts the texts it is called on (everything else passes through)."""

    def __init__(self, tokenizer, calls: collections.Counter):
        self._tokenizer, self.calls = tokenizer, calls

    def __call__(self, text, *args, **kwargs):
        self.calls[text] += 1
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_build_tokenizes_each_text_once(tmp_path, monkeypatch):
    """The filter tokenizes each record once per tokenizer (the decoder once per cut of a text too long for
    it); the batches and the sample choice reuse those tokens; a samples call tokenizes its text once."""
    from jaxft.recipes.condense import build, recipe

    enc_calls, dec_calls = collections.Counter(), collections.Counter()
    build_parts = recipe.build_parts

    def counted_parts(config, placement=None):
        parts = build_parts(config, placement)
        parts["encoder_tokenizer"] = CountingTokenizer(parts["encoder_tokenizer"], enc_calls)
        parts["decoder_tokenizer"] = CountingTokenizer(parts["decoder_tokenizer"], dec_calls)
        return parts

    monkeypatch.setattr(recipe, "build_parts", counted_parts)
    texts = [f"Record {i}: the quick brown fox jumps over the lazy dog" + " and naps" * i for i in range(12)]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = recipe_config("condense", "smoke")
    config.data.path = str(tmp_path / "texts.jsonl")
    task = build(config, None)
    assert len(enc_calls) == len(texts) and set(enc_calls.values()) == {1}  # the fitted text, once
    assert set(dec_calls.values()) == {1} and len(dec_calls) > len(texts)  # the long texts were cut
    before_batches = enc_calls.total(), dec_calls.total()
    next(task.train_batches)
    list(task.eval_batches())
    assert (enc_calls.total(), dec_calls.total()) == before_batches
    before_enc, before_dec = collections.Counter(enc_calls), collections.Counter(dec_calls)
    samples = task.samples_fn(task.trainable, task.frozen)
    assert "reconstruction" in samples
    assert (enc_calls - before_enc).total() == 1
    assert set((dec_calls - before_dec).values()) == {1}


@pytest.mark.slow
def test_demo_preset_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxft.main", "--config", str(ROOT / "configs" / "condense.py") + ":demo",
           "--config.train.steps=8", "--config.train.log_every=1", "--config.train.eval_every=8",
           "--config.train.eval_batches=1", "--config.condense.samples.max_new_tokens=8",
           "--config.optim.schedule.warmup_steps=1", "--config.checkpoint.async_save=False",
           f"--workdir={workdir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "condense demo" in proc.stdout.splitlines()[0] and "configs/condense.py:seed" in proc.stdout
    line = next(s for s in proc.stdout.splitlines() if s.startswith("train loss:"))
    first, last = float(line.split()[2]), float(line.split()[-3])
    assert last < first, line
    before, after = map(float, re.search(r"ae_loss ([\d.]+) \(step 0\) -> ([\d.]+) \(step 8\)", out).groups())
    assert after < before - 0.4, (before, after)
    assert "[reconstruction]" in out and "[continuation]" in out and "step 0: eval" in out
    export = workdir / "export"
    assert (export / "condenser.json").exists() and (export / "adapter" / "adapter_model.safetensors").exists()
