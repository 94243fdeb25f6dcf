"""Two processes training through the real ``Trainer`` (jax.distributed, gloo): a SIGTERM that reaches one
of them stops both at one agreed step (JAX's preemption sync point), saved once, exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.configs import ROOT
from tests.test_multiprocess import _wait_for_line

SCRIPT = ROOT / "tests" / "scripts" / "preempt_trainer.py"


@pytest.mark.slow  # one two-process launch: most of a minute of start-up on a loaded 2-core CPU
def test_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path):
    from jaxft.checkpoint.train_state import TrainCheckpointer

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [tmp_path / f"p{i}.log" for i in range(2)]  # stderr (the progress bar, jax's notices)
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(i), str(port), str(tmp_path / "run"),
                               str(tmp_path / f"p{i}.json")], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=logs[i].open("w")) for i in range(2)]
    try:
        for p in procs:
            _wait_for_line(p, "step 4", timeout=400)
        procs[1].send_signal(signal.SIGTERM)  # not the coordinator, and only this one
        for p in procs:
            p.communicate(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    stopped = results[0]["stopped_at"]
    assert stopped is not None and results[1]["stopped_at"] == stopped and stopped >= 4, results
    assert all(r["exit_code"] == 0 for r in results)
    assert TrainCheckpointer(tmp_path / "run" / "checkpoints", read_only=True).latest_step() == stopped
