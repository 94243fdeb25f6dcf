"""Saving a train state must not need extra copies of it in host RAM (some trainers need 3x)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, sys, jax, jax.numpy as jnp
    from jaxft.checkpoint.train_state import TrainCheckpointer
    # 400 MB, built without temporaries so the baseline peak is the state itself
    state = {"params": {f"w{i}": jnp.full((2500, 10000), float(i), jnp.float32) for i in range(4)}}
    jax.block_until_ready(state)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ck = TrainCheckpointer(sys.argv[1], async_save=sys.argv[2] == "1")
    ck.save(1, state, force=True)
    ck.wait()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print((after - before) / 400e6)
""")


@pytest.mark.parametrize("async_save", ["0", "1"])
def test_saving_adds_little_host_memory(tmp_path, async_save):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt"), async_save],
                         capture_output=True, text=True, check=True)
    extra = float(out.stdout.strip().splitlines()[-1])
    assert extra < 0.5, f"saving grew peak RSS by {extra:.2f}x the state size"
