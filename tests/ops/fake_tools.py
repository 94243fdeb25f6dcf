"""Stand-ins for gcloud, srun and the python a launch script starts, for tests/ops/test_launch.py.

``fake_gcloud`` logs its argv and plays the workers of a TPU slice: ``ssh --worker=all`` runs
the command in bash once per worker (each with its own HOME under FAKE_WORKERS), ``scp``
copies into each worker's HOME. ``fake_srun`` starts FAKE_NODES tasks with SLURM's per-task
variables. ``fake_python`` records argv, cwd and environment, then acts as FAKE_PYTHON_MODE says.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RECORDED_ENV = ("JAX_", "XLA_", "SLURM_", "JAXFT_")


def _log(kind: str, record: dict) -> None:
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"tool": kind, **record}) + "\n")


def _workers(argv: list[str]) -> list[Path]:
    root = Path(os.environ["FAKE_WORKERS"])
    homes = sorted(root.iterdir())
    which = next(a.split("=", 1)[1] for a in argv if a.startswith("--worker="))
    return homes if which == "all" else [homes[int(which)]]


def gcloud(argv: list[str]) -> int:
    _log("gcloud", {"argv": argv})
    if argv[:3] != ["compute", "tpus", "tpu-vm"] or argv[3] not in ("ssh", "scp"):
        return 0
    procs = []
    for home in _workers(argv):
        if argv[3] == "scp":
            src, dest = argv[4], argv[5].split(":", 1)[1]
            shutil.copy(src, home / dest)
            continue
        command = next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))
        env = dict(os.environ, HOME=str(home))
        procs.append(subprocess.Popen(["bash", "-c", command], env=env, cwd=home))
    return max([p.wait() for p in procs], default=0)


def srun(argv: list[str]) -> int:
    _log("srun", {"argv": argv})
    task = argv[argv.index("bash"):]
    n = int(os.environ.get("FAKE_NODES", "2"))
    procs = []
    for i in range(n):
        env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID="0", SLURM_NTASKS=str(n),
                   SLURM_STEP_NUM_NODES=str(n), SLURM_STEP_NODELIST="localhost", SLURM_GPUS_ON_NODE="4")
        procs.append(subprocess.Popen(task, env=env))
    return max(p.wait() for p in procs)


def python(argv: list[str]) -> int:
    tag = os.environ.get("SLURM_PROCID") or Path(os.environ["HOME"]).name
    record = {"argv": argv, "cwd": os.getcwd(), "tag": tag,
              "env": {k: v for k, v in os.environ.items() if k.startswith(RECORDED_ENV)}}
    mode = os.environ.get("FAKE_PYTHON_MODE", "print")
    if mode == "distributed":  # what jaxft.main --distributed does first: join the others from the environment
        import jax

        jax.distributed.initialize()
        record["process"] = [jax.process_index(), jax.process_count()]
        jax.distributed.shutdown()
    _log("python", record)
    print(f"worker {tag}: step 1", flush=True)
    if mode == "until_sigterm":
        stopped = []
        signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
        deadline = time.time() + 60
        while not stopped and time.time() < deadline:
            time.sleep(0.05)
        _log("python_exit", {"tag": tag, "sigterm": bool(stopped)})
        print(f"worker {tag}: SIGTERM, checkpoint saved" if stopped else f"worker {tag}: no signal", flush=True)
    else:
        time.sleep(0.3)
        print(f"worker {tag}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit({"gcloud": gcloud, "srun": srun, "python": python}[sys.argv[1]](sys.argv[2:]))
