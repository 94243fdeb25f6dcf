"""Start-up noise is dropped; other warnings of the same loggers still show."""

import subprocess
import sys

PROGRAM = """
import logging, sys
if sys.argv[1] == "quiet":
    from jaxft.quiet import silence_startup_noise
    silence_startup_noise()
    silence_startup_noise()  # twice is harmless
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
import jax
jax.devices()  # probes the TPU backend on a host without one
logging.getLogger("transformers").warning("PyTorch was not found. Models won't be available")
logging.getLogger("transformers").warning("a real transformers warning")
logging.getLogger("jax._src.xla_bridge").warning("a real jax warning")
"""


def _stderr(mode: str) -> str:
    env_cmd = [sys.executable, "-c", PROGRAM, mode]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_startup_noise_is_silenced_and_real_warnings_stay():
    loud, quiet = _stderr("loud"), _stderr("quiet")
    assert "Unable to initialize backend 'tpu'" in loud and "PyTorch was not found" in loud
    assert "Unable to initialize backend 'tpu'" not in quiet and "PyTorch was not found" not in quiet
    for real in ("a real transformers warning", "a real jax warning"):
        assert real in quiet
