"""A run's stderr: one log format (the engine's ``HH:MM:SS LEVEL message``), no line twice in a row."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.configs import ROOT

ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6}\s+\d+ \S+:\d+\]")
ENGINE_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR|CRITICAL) (?P<message>.*)$")


@pytest.mark.slow  # a two-step CLI run: ~25 s of start-up on a loaded 2-core CPU
def test_a_run_logs_in_one_format_without_duplicates(tmp_path):
    # a lock left by a run that is gone: the engine logs a WARNING when it takes it over
    (tmp_path / "lock").write_text(json.dumps({"host": "elsewhere", "pid": 999999, "since": 0}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "jaxft.main", "--config", "configs/lm.py:smoke",
                           "--config.train.steps=2", "--config.train.eval_every=0", "--config.data.seq_len=32",
                           "--config.model.random_init.num_hidden_layers=1", "--config.optim.schedule.warmup_steps=1",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert not [line for line in lines if ABSL_LINE.match(line)], proc.stderr[-3000:]
    messages = [m["message"] for line in lines if (m := ENGINE_LINE.match(line))]
    assert any("taking over the lock of a run that is gone" in m for m in messages), proc.stderr[-3000:]
    repeated = [a for a, b in zip(messages, messages[1:]) if a == b]
    assert not repeated, repeated
