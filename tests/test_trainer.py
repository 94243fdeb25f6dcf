"""The engine end to end on the lm recipe: resume equivalence, SIGTERM, CLI errors."""

import os
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
    from jaxft.train.trainer import Trainer

    straight = Trainer(_smoke(tmp_path / "a"), tmp_path / "a").run()
    first = Trainer(_smoke(tmp_path / "b"), tmp_path / "b").run(until_step=4)
    assert [s for s, _ in first["train_loss"]] == [1, 2, 3, 4]
    resumed = Trainer(_smoke(tmp_path / "b"), tmp_path / "b").run()
    assert [s for s, _ in resumed["train_loss"]] == [5, 6, 7, 8]
    a = np.array([l for _, l in straight["train_loss"]])
    b = np.array([l for _, l in first["train_loss"] + resumed["train_loss"]])
    np.testing.assert_allclose(b, a, rtol=1e-6)
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
def test_cli_reports_config_mistakes_in_one_line(args, message):
    proc = _cli("--config", "configs/lm.py:smoke", *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert message in err
    assert "Traceback" not in err
