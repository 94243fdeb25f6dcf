"""Ctrl-C at any moment: during start-up (exit 130, one line, nothing "ignored"), inside a gc callback or a
weakref callback (delivered again in ordinary code), and a second Ctrl-C in the loop (stop, no save)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from tests.configs import ROOT, recipe_config

# What the interrupted code prints: the KeyboardInterrupt reached ordinary code (exit 7) or it did not (0).
_LANDS = """
import signal, sys, time
from jaxft.interrupts import ctrl_c_raises
{setup}
try:
    with ctrl_c_raises():
        {trigger}
        deadline = time.time() + 5
        while time.time() < deadline:
            sum(range(1000))
except KeyboardInterrupt:
    sys.exit(7)
"""

_GC_CALLBACK = """
import gc
fired = []
def on_gc(phase, info):  # a Ctrl-C that arrives while a gc callback runs
    if phase == "start" and not fired:
        fired.append(1)
        signal.raise_signal(signal.SIGINT)
        sum(range(1000))  # more of the callback after the signal
gc.callbacks.append(on_gc)
"""

_WEAKREF_CALLBACK = """
import weakref
class Thing: pass
thing = Thing()
def on_gone(ref):  # a KeyboardInterrupt raised where Python can only report it as "ignored"
    raise KeyboardInterrupt
ref = weakref.ref(thing, on_gone)
"""


def _default_ctrl_c() -> None:
    """In the child: Python's default SIGINT handling, even when the test runner was started in the
    background (a shell's ``&`` makes its children ignore SIGINT, and Python then keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=_default_ctrl_c)


@pytest.mark.parametrize("setup, trigger", [(_GC_CALLBACK, "gc.collect()"), (_WEAKREF_CALLBACK, "del thing")],
                         ids=["gc-callback", "weakref-callback"])
def test_a_ctrl_c_landing_where_exceptions_are_ignored_still_interrupts(setup, trigger):
    proc = _python(_LANDS.format(setup=textwrap.indent(setup, ""), trigger=trigger))
    assert proc.returncode == 7, proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_without_the_handler_the_same_ctrl_c_is_ignored():
    """The reference behaviour the handler fixes: Python's own handler loses the interrupt in a gc callback."""
    code = _LANDS.format(setup=_GC_CALLBACK, trigger="gc.collect()").replace("with ctrl_c_raises():", "if True:")
    proc = _python(code)
    assert proc.returncode == 0 and "Exception ignored" in proc.stderr, proc.stderr


# The console script `jaxft` as its installed wrapper calls it: `jaxft train --config ...`.
_CONSOLE_SCRIPT = ["-c", "import sys; from jaxft.console import run; sys.argv[0] = 'jaxft'; run()", "train"]


# Enough steps that no delay outlives the run on any machine: a late Ctrl-C lands in the loop (saved, 130).
_LONG_SMOKE = ["--config", "configs/lm.py:smoke", "--config.train.steps=100000"]


@pytest.mark.slow  # launches interrupted 1, 3, 6 and 10 s in (python -m) and 0.3 and 1 s in (the script): ~35 s
@pytest.mark.parametrize("entry, delays", [(["-m", "jaxft.main"], (1, 3, 6, 10)), (_CONSOLE_SCRIPT, (0.3, 1))],
                         ids=["python-m", "console-script"])
def test_ctrl_c_at_any_moment_of_start_up_exits_130_without_a_traceback(entry, delays):
    for delay in delays:
        with tempfile.TemporaryDirectory() as workdir:
            proc = subprocess.Popen([sys.executable, *entry, *_LONG_SMOKE, "--workdir", workdir],
                                    cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
                                    preexec_fn=_default_ctrl_c)
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"the run went on after a Ctrl-C {delay} s after launch")
            assert proc.returncode == 130, f"Ctrl-C at {delay} s: exit {proc.returncode}\n{err[-3000:]}"
            assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
            assert "error: interrupted" in err or "Ctrl-C at step" in err, err[-3000:]
            assert not os.path.exists(os.path.join(workdir, "lock"))


class _CtrlCAt:
    """The training batches, with ``presses`` Ctrl-Cs arriving as the batch of ``step`` is taken."""

    def __init__(self, batches, step: int, presses: int):
        self.batches, self.step, self.presses, self.taken = batches, step, presses, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.taken += 1
        if self.taken == self.step:
            for _ in range(self.presses):
                signal.raise_signal(signal.SIGINT)
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


def _trainer(workdir, step: int, presses: int):
    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer

    config = recipe_config("lm", "smoke")
    config.train.steps, config.train.eval_every, config.train.log_every = 8, 0, 1
    config.checkpoint.every, config.checkpoint.async_save = 2, False
    config.data.seq_len, config.model.random_init.num_hidden_layers = 32, 1

    def build_interrupted(config, placement):
        task = build(config, placement)
        task.train_batches = _CtrlCAt(task.train_batches, step, presses)
        return task

    return Trainer(config, workdir, build_interrupted)


def test_one_ctrl_c_saves_the_step_and_a_second_stops_without_a_save(tmp_path):
    from jaxft.checkpoint.train_state import TrainCheckpointer
    from jaxft.train.trainer import Preempted

    with pytest.raises(Preempted) as stopped:
        _trainer(tmp_path / "once", step=3, presses=1).run()
    assert stopped.value.exit_code == 130 and "Ctrl-C at step 3" in str(stopped.value)
    assert TrainCheckpointer(tmp_path / "once" / "checkpoints", read_only=True).latest_step() == 3

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "twice", step=3, presses=2).run()
    # the periodic save of step 2 is there, nothing after it; the workdir is free again
    assert TrainCheckpointer(tmp_path / "twice" / "checkpoints", read_only=True).latest_step() == 2
    assert not (tmp_path / "twice" / "lock").exists()
