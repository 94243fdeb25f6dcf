"""The engine end to end on the lm recipe: resume equivalence, SIGTERM, CLI errors."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.configs import ROOT, recipe_config


def _smoke(workdir, steps=8):
    c = recipe_config("lm", "smoke")
    c.train.steps = steps
    c.train.log_every = 1
    c.train.eval_every = 0
    c.checkpoint.every = 100
    c.checkpoint.async_save = False
    c.optim.schedule.peak_lr = 1e-2
    return c


def test_resumed_run_has_the_same_losses_as_an_uninterrupted_one(tmp_path):
    """The resumed run starts from the uninterrupted run's own step-4 checkpoint, copied into a new workdir
    (stopping a run at a step, ``run(until_step=...)``, is tested in test_engine and scripts/topology.py)."""
    from jaxft.train.trainer import Trainer

    from jaxft.recipes.lm import build

    config = _smoke(tmp_path / "a")
    config.checkpoint.every = 4
    straight = Trainer(config, tmp_path / "a", build).run()
    shutil.copytree(tmp_path / "a" / "checkpoints" / "4", tmp_path / "b" / "checkpoints" / "4")
    resumed = Trainer(_smoke(tmp_path / "b"), tmp_path / "b", build).run()
    assert [s for s, _ in resumed["train_loss"]] == [5, 6, 7, 8]
    a = np.array([x for _, x in straight["train_loss"]])
    np.testing.assert_allclose([x for _, x in resumed["train_loss"]], a[4:], rtol=1e-6)
    assert a[-1] < a[0]


def _cli(*args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "jaxft.main", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    proc = _cli("--config", "configs/lm.py:smoke", "--config.train.steps=100000", "--config.train.eval_every=0",
                "--config.checkpoint.every=100000", f"--workdir={tmp_path}")
    deadline = time.time() + 240
    seen = ""
    while time.time() < deadline:  # wait until training steps are running
        line = proc.stderr.readline()
        seen += line
        if "train:" in line and "/100000" in line and " 0/100000" not in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, seen + err
    assert "SIGTERM at step" in err and "checkpoint saved" in err
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) >= 1


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=5"], "unknown config key 'train.stepz'"),
    (["--config.train.steps=abc"], "invalid literal for int()"),
    (["--config.model.path=/no/such/model"], "'/no/such/model' does not exist"),
    (["--config.data.path=/no/such/data.jsonl"], "/no/such/data.jsonl"),
])
def test_cli_reports_config_mistakes_in_one_line(args, message, tmp_path):
    proc = _cli("--config", "configs/lm.py:smoke", *args, f"--workdir={tmp_path}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert message in err
    assert "Traceback" not in err


def _user_checkpoint(directory):
    """A small HF checkpoint + tokenizer directory, as a user would point model.path at."""
    import torch
    import transformers

    from jaxft.tokenization.demo import demo_tokenizer

    tokenizer = demo_tokenizer("bpe", vocab_size=2048)
    config = transformers.Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=16, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_lora_on_a_user_checkpoint_and_jsonl_exports_a_peft_adapter(tmp_path):
    import json

    import torch
    import transformers
    import jax
    from peft import PeftModel

    import jaxft
    from jaxft.data.corpus import demo_corpus
    from jaxft.train.trainer import Trainer

    model_dir = _user_checkpoint(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in demo_corpus()[:300]) + "\n")
    c = recipe_config("lm", "default")
    c.model.path = str(model_dir)
    c.data.path = str(data)
    c.data.seq_len = 64
    c.lora.rank = 4
    c.train.steps = 6
    c.train.batch_size = 4
    c.train.eval_every = 3
    c.train.eval_batches = 1
    c.optim.schedule.warmup_steps = 1
    c.optim.schedule.peak_lr = 1e-2
    c.export.source = "last"
    from jaxft.recipes.lm import build

    trainer = Trainer(c, tmp_path / "run", build)
    history = trainer.run()
    export = trainer.export()
    assert history["final_step"] == 6 and len(history["eval"]) == 2 and trainer.exported_step == 6
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))

    # the exported adapter holds the trained LoRA and gives the same logits in peft as in jaxft
    cfg, base = jaxft.load_pretrained(model_dir)
    adapters = jaxft.lora.load_peft(export / "adapter", cfg)
    trained = jax_params(trainer.state["params"]["lora"])
    for got, want in zip(jax.tree.leaves(adapters.params), jax.tree.leaves(trained)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    ids = np.array([[5, 17, 42, 9, 77, 3, 100, 64]])
    ours = np.asarray(jaxft.logits(cfg, base, ids, lora=adapters))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, export / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    merged = transformers.AutoModelForCausalLM.from_pretrained(export / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert np.abs(merged(torch.tensor(ids)).logits.numpy() - ours).max() <= 1e-4


def jax_params(tree):
    import jax

    return jax.device_get(tree)


def test_bad_record_is_named_with_file_and_row(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"txt": "oops"}\n')
    proc = _cli("--config", "configs/lm.py:smoke", f"--config.data.path={data}", f"--workdir={tmp_path / 'run'}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "bad.jsonl:3" in err and "'text'" in err
