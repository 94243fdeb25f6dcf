"""minigpt build: the loss through the task vs numpy, LoRA SFT from init_from with a PEFT adapter, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.config import load_config_file
from jaxft.models import decoder
from jaxft.models.config import DecoderConfig
from jaxft.models.init import init_params
from jaxft.recipes import minigpt
from jaxft.recipes.minigpt import data as mdata
from jaxft.recipes.minigpt.export import save_model
from jaxft.train.lm import smoothed_loss_sums
from jaxft.recipes.minigpt.model import hf_config
from jaxft.tokenization.char import build_char_vocab

ROOT = Path(__file__).resolve().parents[3]


def _config(preset, tmp_path, **overrides):
    c = load_config_file(f"{ROOT}/configs/minigpt.py:{preset}")
    c.minigpt.cache_dir = str(tmp_path / "cache")
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.05])
def test_label_smoothing_matches_torch(smoothing):
    import torch
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 5))
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 1, 1]])
    loss, count, _ = smoothed_loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), smoothing)
    keep = mask.astype(bool)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits[keep]), torch.tensor(targets[keep]),
                                            label_smoothing=smoothing, reduction="sum").item()
    assert float(count) == keep.sum() and float(loss) == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_pretrain_loss_through_the_task_matches_numpy(tmp_path):
    task = minigpt.build(_config("smoke", tmp_path), None)
    batch = next(task.train_batches)
    assert batch["input_ids"].shape == (4, 32)
    np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    loss, count, metrics = task.loss_fn(task.trainable, task.frozen, jax.tree.map(jnp.asarray, batch), None)
    params = task.trainable["model"]
    cfg_json = json.loads(next(Path(tmp_path / "cache").rglob("*.bin.json")).read_text())
    assert cfg_json["num_tokens"] > 0
    from jaxft.recipes.minigpt.recipe import _model, _tokenizer, _texts

    c = _config("smoke", tmp_path)
    cfg, _ = _model(c, _tokenizer(c, _texts(c, "pretrain")[0])[0])
    logits, _ = decoder.forward(cfg, params, jnp.asarray(batch["input_ids"]))
    logp = _log_softmax(logits)
    ref = -np.take_along_axis(logp, batch["targets"][..., None], -1).sum()
    assert float(count) == 4 * 32 and float(loss) == pytest.approx(ref, rel=1e-5)
    # dropout is on in training (a key) and off at eval (None)
    loss_train, _, _ = task.loss_fn(task.trainable, task.frozen, jax.tree.map(jnp.asarray, batch),
                                    jax.random.key(0))
    assert abs(float(loss_train) - float(loss)) > 1e-3


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny Llama-shaped 'pretrained' minigpt export with a character tokenizer."""
    root = tmp_path_factory.mktemp("pre")
    texts = mdata.demo_sft_texts(200)
    tok = build_char_vocab(texts, root / "tok")
    cfg = DecoderConfig.from_hf(hf_config(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4,
                                          context=96, shape="llama", eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id))
    params = init_params(cfg, jax.random.key(0), std=0.2)
    save_model(root / "export" / "model", cfg, params, tok, None)
    return root / "export", cfg, params, tok


def test_lora_sft_from_init_from_masks_and_exports_peft(tmp_path, pretrained):
    import torch
    import peft
    import transformers
    export, cfg, params, tok = pretrained
    c = _config("sft_demo", tmp_path, **{"init_from": str(export), "data.seq_len": 96, "train.batch_size": 4,
                                         "minigpt.demo_sft_examples": 40})
    task = minigpt.build(c, None)
    assert set(task.trainable) == {"lora"} and set(task.trainable["lora"]) and task.frozen["base"]
    batch = jax.tree.map(jnp.asarray, next(task.train_batches))
    # the loss covers exactly the response tokens (and EOS): the positions after each '### Response:\n'
    loss, count, _ = task.loss_fn(task.trainable, task.frozen, batch, None)
    mask = np.asarray(batch["loss_mask"])
    ids = np.asarray(batch["input_ids"])
    for row, m in zip(ids, mask):
        first = int(np.argmax(m))
        assert tok.decode(row[:first]).endswith("### Response:\n")
    logits, _ = decoder.forward(cfg, params, batch["input_ids"], batch["attention_mask"], batch["positions"],
                                segment_ids=batch["segment_ids"])
    logp = _log_softmax(logits)[:, :-1]
    live = mask[:, 1:].astype(bool)
    ref = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0][live].sum()  # B = 0 at init: the base's NLL
    assert float(count) == live.sum() and float(loss) == pytest.approx(ref, rel=1e-5)
    # export: a PEFT adapter over the Llama-shaped base, and the merged model, agree in transformers
    trained = jax.tree.map(lambda x: x + 0.05 * jnp.ones_like(x), task.trainable)
    out = tmp_path / "out"
    task.export_fn(str(out), trained, task.frozen)
    base = transformers.AutoModelForCausalLM.from_pretrained(export / "model", dtype=torch.float32)
    with_adapter = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    x = torch.tensor(ids[:2, :20])
    with torch.no_grad():
        np.testing.assert_allclose(with_adapter(x).logits.numpy(), merged(x).logits.numpy(), atol=1e-4)
    loaded = minigpt.load_export(str(out))
    cfg2, tok2 = loaded.cfg, loaded.tokenizer
    assert cfg2 == cfg and tok2.get_vocab() == tok.get_vocab()


def test_sft_reads_a_txt_of_many_examples_as_many_records(tmp_path, pretrained):
    import re

    export, cfg, params, tok = pretrained
    path = tmp_path / "sft.txt"  # the reference's SFT data: one text file, examples one after another
    path.write_text("\n\n".join(mdata.demo_sft_texts(300, seed=5)) + "\n")
    c = _config("sft_demo", tmp_path, **{"init_from": str(export), "data.path": str(path), "data.seq_len": 96,
                                         "train.batch_size": 4})
    task = minigpt.build(c, None)
    train, valid = (int(n) for n in re.search(r"(\d+) train / (\d+) validation examples", task.description).groups())
    assert train + valid == 300 and valid > 0


def test_sample_accepts_the_references_underscore_flags(tmp_path, pretrained, capsys, monkeypatch):
    from jaxft.recipes.minigpt import sampling as msampling
    from jaxft.recipes.minigpt.cli import main

    settings = []
    reference_sampling = msampling.reference_sampling
    monkeypatch.setattr(msampling, "reference_sampling",
                        lambda cfg, tok, **kw: settings.append(kw) or reference_sampling(cfg, tok, **kw))
    export = pretrained[0]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What\n")
    common = ["sample", "--ckpt", str(export), "--temp", "0"]
    assert main(common + ["--prompts_file", str(prompts), "--max_new", "6", "--min_new", "2", "--top_p", "0.9",
                          "--rep_penalty", "1.3", "--no_repeat", "2"]) == 0
    underscored = capsys.readouterr().out
    assert main(common + ["--prompt-file", str(prompts), "--max-new", "6", "--min-new", "2", "--top-p", "0.9",
                          "--rep-penalty", "1.3", "--no-repeat", "2"]) == 0
    assert capsys.readouterr().out == underscored and underscored.startswith("### Prompt 1\nWhat\n---\n")
    # the flags took effect: both spellings reach the sampler as the values given, not the defaults
    assert settings[0] == settings[1] == dict(temp=0.0, top_p=0.9, min_new=2, max_new=6, rep_penalty=1.3,
                                              no_repeat=2)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxft.recipes.minigpt", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_cli_tokenizer_and_sample_format(tmp_path, pretrained):
    export, cfg, params, tok = pretrained
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(mdata.demo_sft_texts(300)))
    spm = _cli("tokenizer", "--input", str(text), "--vocab-size", "400", "--model-type", "bpe", "--output",
               str(tmp_path / "spm"))
    assert spm.returncode == 0, spm.stderr
    assert (tmp_path / "spm" / "tokenizer.model").is_file() and (tmp_path / "spm" / "tokenizer.json").is_file()
    char = _cli("tokenizer", "--input", str(text), "--char", "--output", str(tmp_path / "char"))
    assert char.returncode == 0 and (tmp_path / "char" / "char_vocab.json").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("### Instruction: What is 1 plus 2?\n### Response:\n\nSpell\n")
    run = _cli("sample", "--ckpt", str(export), "--prompt", "What", "--prompt-file", str(prompts), "--temp", "0",
               "--max-new", "6", "--min-new", "2")
    assert run.returncode == 0, run.stderr
    blocks = run.stdout.split("### Prompt ")[1:]
    assert [b.split("\n", 1)[0] for b in blocks] == ["1", "2", "3"]
    import jaxft
    from jaxft.recipes.minigpt.sampling import reference_sampling

    sampling = reference_sampling(cfg, tok, temp=0, min_new=2, max_new=6)
    ids = tok.encode("What", add_special_tokens=False)
    new = jaxft.generate(cfg, params, np.asarray([ids]), sampling).token_lists()[0]
    expected = "".join(ch for ch in tok.decode(ids + new, skip_special_tokens=True) if ord(ch) >= 32 or ch in "\n\t")
    assert blocks[0] == f"1\nWhat\n---\n{expected.strip()} \n\n"
    assert blocks[1].startswith("2\n### Instruction: What is 1 plus 2?\n### Response:\n---\n")
    bad = _cli("sample", "--ckpt", str(tmp_path / "missing"), "--prompt", "x")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --ckpt: no such directory")
    assert len(bad.stderr.strip().splitlines()) == 1
