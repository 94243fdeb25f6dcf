"""Two local processes (jax.distributed + gloo) train together, share a checkpoint, and resume together
after a SIGTERM to both."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).parent / "scripts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_step_and_checkpoint_together(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "two_process.py"), str(i), str(port),
                               str(tmp_path / "ckpt"), str(tmp_path / f"p{i}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    results = [dict(np.load(tmp_path / f"p{i}.npz")) for i in range(2)]
    np.testing.assert_array_equal(results[0]["losses"], results[1]["losses"])  # one global loss
    assert results[0]["losses"][1] < results[0]["losses"][0]
    assert all(bool(r["restored_equal"]) for r in results)
    assert (tmp_path / "ckpt" / "2").is_dir()

    # the same step in a single process on one device gives the same losses
    alone = subprocess.run([sys.executable, str(SCRIPTS / "two_process.py"), "-1", "0", "-", str(tmp_path / "one.npz")],
                           env=env, capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "one.npz")["losses"], results[0]["losses"], rtol=1e-5)


def _wait_for_line(proc, text: str, timeout: float = 300) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == text:
            return lines
    raise AssertionError(f"no '{text}' from the process:\n" + "".join(lines)[-3000:])


@pytest.mark.slow  # three two-process launches; each start-up takes most of a minute on a loaded 2-core CPU
def test_sigterm_to_both_processes_saves_one_step_and_the_same_command_resumes(tmp_path):
    steps = 24
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)

    def start(attempt: str, ckpt: str = "ckpt"):
        port = _free_port()
        return [subprocess.Popen([sys.executable, str(SCRIPTS / "two_process.py"), str(i), str(port),
                                  str(tmp_path / ckpt), str(tmp_path / f"{attempt}{i}.npz"), str(steps)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for i in range(2)]

    first = start("first")
    for p in first:  # both are training, past the first periodic checkpoint
        _wait_for_line(p, "step 7")
    for p in first:
        p.send_signal(signal.SIGTERM)
    logs = [p.communicate(timeout=300)[0] for p in first]
    assert all(p.returncode == 0 for p in first), "\n".join(log[-3000:] for log in logs)
    a = [dict(np.load(tmp_path / f"first{i}.npz")) for i in range(2)]
    stopped = int(a[0]["stopped_at"])
    assert stopped == int(a[1]["stopped_at"]) and 7 <= stopped < steps  # one agreed step, saved by both
    assert (tmp_path / "ckpt" / str(stopped)).is_dir()

    second = start("second")  # the same command again
    logs = [p.communicate(timeout=300)[0] for p in second]
    assert all(p.returncode == 0 for p in second), "\n".join(log[-3000:] for log in logs)
    b = [dict(np.load(tmp_path / f"second{i}.npz")) for i in range(2)]
    assert int(b[0]["start"]) == stopped and list(b[0]["steps"]) == list(range(stopped + 1, steps + 1))
    assert int(b[0]["stopped_at"]) == -1

    # the interrupted run's losses are those of one uninterrupted run of the same two processes
    whole = start("whole", "whole_ckpt")
    logs = [p.communicate(timeout=300)[0] for p in whole]
    assert all(p.returncode == 0 for p in whole), "\n".join(log[-3000:] for log in logs)
    reference = np.load(tmp_path / "whole0.npz")["losses"]
    assert len(reference) == steps
    for i in range(2):
        np.testing.assert_array_equal(np.concatenate([a[i]["losses"], b[i]["losses"]]), reference)
