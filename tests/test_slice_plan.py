"""The condense seed on a v5e-16 slice (4 hosts x 4 chips), simulated: the mesh launch/tpu_vm_pod.sh documents for
it reaches jaxft.main, and its train step compiles ahead of time for 16 devices within a v5e chip's 16 GiB.

16 fake CPU devices in one process stand in for the slice: XLA partitions the step into the same per-device
program whether the 16 devices sit in one process or four (the hosts only change where collectives travel),
and make_mesh lays the devices out in order, so a tensor pair is two chips of one host, as on the slice.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "tpu_vm_pod.sh"


def _documented_mesh() -> str:
    """The --mesh of the condense example in the script's header."""
    header = SCRIPT.read_text().split("\nset -euo")[0]
    found = re.search(r"run .*configs/condense\.py:seed .*--mesh (\S+)", header)
    assert found, "tpu_vm_pod.sh documents no --mesh for the condense seed"
    return found.group(1)


def test_the_documented_mesh_reaches_jaxft_main():
    env = dict(os.environ, TPU_NAME="pod1", TPU_ZONE="z")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "run", "--config", "configs/condense.py:seed",
                           "--checkpoint-dir", "gs://b/c1", "--mesh", _documented_mesh()],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for pair in _documented_mesh().split(","):
        assert f"--config.mesh.shape.{pair}" in proc.stdout


def test_a_bad_mesh_is_one_line_and_exit_code_2():
    env = dict(os.environ, TPU_NAME="pod1", TPU_ZONE="z")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "run", "--config", "c", "--checkpoint-dir", "gs://b/c",
                           "--mesh", "fsdp=8,model=2"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--mesh 'fsdp=8,model=2'" in proc.stderr


@pytest.mark.slow
def test_the_condense_seed_compiles_and_fits_a_v5e_16_slice():
    mesh = _documented_mesh()
    proc = subprocess.run([sys.executable, "-m", "jaxft.bench", "plan", "--recipe", "condense", "--devices", "16",
                           "--mesh", mesh, "--json"], capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plan["mesh"] == {k: int(v) for k, v in (p.split("=") for p in mesh.split(","))}
    assert 16 == plan["mesh"]["data"] * plan["mesh"]["fsdp"] * plan["mesh"]["tensor"]
    assert plan["fits"]["TPU v5e (16 GiB HBM)"], plan["per_device_gib"]
