"""Two local processes (jax.distributed + gloo) train together and share a checkpoint."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

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
