"""The launch scripts in dry-run mode print exact commands; with fake gcloud/srun on PATH they
run them: each worker or node gets the right command line and environment."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
FAKES = Path(__file__).with_name("fake_tools.py")
TPU = ["--name", "pod1", "--zone", "us-central2-b"]


@pytest.fixture
def fake(tmp_path):
    """PATH with fake gcloud/srun/python3/pip/python, a fake venv, two fake TPU workers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "srun", "python"):
        (bin_dir / tool).write_text(f'#!/bin/sh\nexec {sys.executable} {FAKES} {tool} "$@"\n')
    (bin_dir / "pip").write_text('#!/bin/sh\necho "$*" >> "$HOME/pip.log"\n')
    # `python3 -m venv DIR` makes DIR/bin/activate, which puts the fakes first on PATH
    (bin_dir / "python3").write_text(
        f'#!/bin/sh\nmkdir -p "$3/bin"\necho \'export PATH="{bin_dir}:$PATH"\' > "$3/bin/activate"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    for i in range(2):
        (tmp_path / "workers" / f"w{i}").mkdir(parents=True)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "calls.jsonl"),
               FAKE_WORKERS=str(tmp_path / "workers"), TMPDIR=str(tmp_path), JAXFT_VENV=str(venv), JAX_PLATFORMS="cpu")
    for key in ("DRY_RUN", "TPU_NAME", "TPU_ZONE", "TPU_PROJECT", "XLA_FLAGS", "JAXFT_WORKDIR", "JAXFT_COORDINATOR"):
        env.pop(key, None)

    class Fake:
        root, workers, base_env = tmp_path, tmp_path / "workers", env

        def run(self, script, *args, **extra_env):
            return subprocess.run(["bash", str(LAUNCH / script), *args], env=dict(env, **extra_env),
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path)

        def calls(self, tool=None):
            file = tmp_path / "calls.jsonl"
            rows = [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
            return [r for r in rows if tool is None or r["tool"] == tool]

    return Fake()


def _commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def test_tpu_create_variants_dry_run(fake):
    out = fake.run("tpu_vm_pod.sh", "--dry-run", "create", *TPU, "--type", "v5litepod-16",
                   "--version", "v2-alpha-tpuv5-lite", "--spot")
    assert out.returncode == 0, out.stderr
    assert _commands(out.stdout) == ["gcloud compute tpus tpu-vm create pod1 --zone=us-central2-b "
                                     "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --spot"]
    out = fake.run("tpu_vm_pod.sh", "create", *TPU, "--project", "p1", "--type", "v4-32", "--version",
                   "tpu-ubuntu2204-base", "--queued", "--spot", DRY_RUN="1")
    assert _commands(out.stdout) == ["gcloud compute tpus queued-resources create pod1 --node-id=pod1 "
                                     "--zone=us-central2-b --project=p1 --accelerator-type=v4-32 "
                                     "--runtime-version=tpu-ubuntu2204-base --spot"]
    out = fake.run("tpu_vm_pod.sh", "--dry-run", "create", *TPU, "--type", "v4-8", "--version", "v", "--preemptible")
    assert _commands(out.stdout)[0].endswith("--accelerator-type=v4-8 --version=v --preemptible")
    out = fake.run("tpu_vm_pod.sh", "--dry-run", "setup", *TPU, "--git", "https://example.com/jaxft.git", "--ref", "v1")
    assert _commands(out.stdout) == [
        "gcloud compute tpus tpu-vm ssh pod1 --zone=us-central2-b --worker=all '--command=set -e; "
        "[ -d ~/jaxft/.git ] || git clone -q https://example.com/jaxft.git ~/jaxft; git -C ~/jaxft fetch -q origin v1; "
        "git -C ~/jaxft checkout -q --detach FETCH_HEAD; cd ~/jaxft && python3 -m venv .venv && . .venv/bin/activate "
        "&& pip install -q -U pip && pip install -q -e '\\''.[tpu]'\\'' gcsfs'"]
    out = fake.run("tpu_vm_pod.sh", "--dry-run", "delete", *TPU, "--queued")
    assert _commands(out.stdout) == [
        "gcloud compute tpus queued-resources delete pod1 --zone=us-central2-b --force --quiet"]
    assert fake.calls() == []  # a dry run runs nothing


@pytest.mark.parametrize("args, message", [
    (["create", *TPU, "--type", "v4-8", "--version", "v", "--queued", "--preemptible"],
     "error: queued resources take --spot, not --preemptible"),
    (["create", *TPU, "--type", "v4-8", "--version", "v", "--spot", "--preemptible"],
     "error: --spot and --preemptible exclude each other"),
    (["run", *TPU, "--config", "configs/lm.py"], "error: run needs --checkpoint-dir (gs://BUCKET/PATH, so a "
                                                 "preempted slice can resume)"),
    (["run", "--zone", "z", "--config", "c"], "error: --name (or TPU_NAME) is required"),
    (["stop", *TPU], "error: --run-id is required for stop"),
    (["run", *TPU, "--config", "c", "--checkpoint-dir", "gs://b/x", "extra"],
     "error: unexpected argument 'extra' (arguments for jaxft.main go after --)"),
    (["launch", *TPU], "error: unknown command 'launch' (create, setup, run, logs, status, stop, delete)"),
])
def test_tpu_mistakes_are_one_line(fake, args, message):
    out = fake.run("tpu_vm_pod.sh", *args)
    assert out.returncode == 2 and out.stderr.strip() == message and fake.calls() == []


def test_tpu_setup_run_stop_on_fake_workers(fake):
    out = fake.run("tpu_vm_pod.sh", "setup", *TPU)
    assert out.returncode == 0, out.stderr
    gcloud = [c["argv"] for c in fake.calls("gcloud")]
    assert gcloud[0] == ["compute", "tpus", "tpu-vm", "scp", str(fake.root / "jaxft-src.tar.gz"),
                         "pod1:jaxft-src.tar.gz", "--zone=us-central2-b", "--worker=all"]
    assert gcloud[1][:6] == ["compute", "tpus", "tpu-vm", "ssh", "pod1", "--zone=us-central2-b"]
    for w in ("w0", "w1"):  # this checkout's tracked files, installed with the TPU extra
        assert (fake.workers / w / "jaxft" / "launch" / "tpu_vm_pod.sh").is_file()
        assert (fake.workers / w / "pip.log").read_text().splitlines() == ["install -q -U pip",
                                                                          "install -q -e .[tpu] gcsfs"]

    args = ["run", *TPU, "--config", "configs/lm.py:smoke", "--checkpoint-dir", "gs://bucket/runs/r1", "--",
            "--config.train.steps=10", "--config.sample.prompt=it's a test"]
    dry = fake.run("tpu_vm_pod.sh", "--dry-run", *args)
    main = ("python -m jaxft.main --distributed --config configs/lm.py:smoke --workdir ~/jaxft-runs/r1 "
            "--config.checkpoint.dir=gs://bucket/runs/r1 --config.train.steps=10 "
            "'--config.sample.prompt=it'\\''s a test'")
    printed = _commands(dry.stdout)
    assert printed[0].startswith("gcloud compute tpus tpu-vm ssh pod1 --zone=us-central2-b --worker=all '--command=")
    quoted = main.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))
    assert f"setsid nohup {quoted} >> ~/jaxft-runs/r1.log" in printed[0]
    assert printed[1].startswith("gcloud compute tpus tpu-vm ssh pod1 --zone=us-central2-b --worker=0 '--command=")
    assert "run id: r1" in dry.stdout

    out = fake.run("tpu_vm_pod.sh", *args)
    assert out.returncode == 0, out.stderr
    started = {c["tag"]: c for c in fake.calls("python")}
    assert sorted(started) == ["w0", "w1"]
    for w, call in started.items():  # the same command on every worker, from its ~/jaxft
        assert call["argv"] == ["-m", "jaxft.main", "--distributed", "--config", "configs/lm.py:smoke", "--workdir",
                                str(fake.workers / w / "jaxft-runs" / "r1"), "--config.checkpoint.dir=gs://bucket/runs/r1",
                                "--config.train.steps=10", "--config.sample.prompt=it's a test"]
        assert call["cwd"] == str(fake.workers / w / "jaxft")
    # worker 0's log is streamed until its run ends; worker 1's stays on worker 1
    assert "worker w0: step 1" in out.stdout and "worker w0: done" in out.stdout and "w1" not in out.stdout
    assert "worker w1: done" in (fake.workers / "w1" / "jaxft-runs" / "r1.log").read_text()

    # a long run: stop sends SIGTERM to it on every worker
    proc = subprocess.Popen(["bash", str(LAUNCH / "tpu_vm_pod.sh"), *args[:-3], "--run-id", "r2"],
                            env=dict(fake.base_env, FAKE_PYTHON_MODE="until_sigterm"), cwd=fake.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [fake.workers / w / "jaxft-runs" / "r2.pid" for w in ("w0", "w1")]
    deadline = time.time() + 60
    while (len([c for c in fake.calls("python") if c["argv"][6].endswith("r2")]) < 2
           or not all(p.exists() and p.read_text().strip() for p in pids)) and time.time() < deadline:
        time.sleep(0.1)
    stop = fake.run("tpu_vm_pod.sh", "stop", *TPU, "--run-id", "r2")
    assert stop.returncode == 0, stop.stderr
    streamed, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert sorted((c["tag"], c["sigterm"]) for c in fake.calls("python_exit")) == [("w0", True), ("w1", True)]
    assert "worker w0: SIGTERM, checkpoint saved" in streamed
    status = fake.run("tpu_vm_pod.sh", "status", *TPU, "--run-id", "r2")
    assert status.stdout.count(": r2 not running\n") == 2
    assert f"\n{socket.gethostname()}: r2 running" not in status.stdout


def _free_port_for_slurm_job() -> int:
    """A job id whose derived coordinator port (61440 + id % 4096) is free here."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 61440:
            return port - 61440
    with socket.socket() as s:  # the OS hands out low ports here: pick one in the range ourselves
        for port in range(61440 + os.getpid() % 2000, 65535):
            try:
                s.bind(("127.0.0.1", port))
                return port - 61440
            except OSError:
                continue
    raise RuntimeError("no free port in SLURM's coordinator range")


def test_slurm_dry_run_prints_the_srun_command(fake):
    out = fake.run("slurm_gpu.sbatch", "--dry-run", "configs/lm.py:smoke", "--config.train.steps=4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == [f"JAXFT_SUBMIT_DIR={fake.root}", f"JAXFT_VENV={fake.root / 'venv'}"]
    text = "\n".join(lines[2:])
    assert text.startswith("+ srun --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL bash -c 'set -euo pipefail\n")
    assert text.endswith("exec python -m jaxft.main --distributed \"$@\"' jaxft-task --config configs/lm.py:smoke "
                         "--workdir runs/slurm-lm-smoke --config.train.steps=4")
    assert fake.calls() == []


def test_slurm_tasks_join_one_jax_distributed_run(fake):
    job = _free_port_for_slurm_job()
    out = fake.run("slurm_gpu.sbatch", "configs/lm.py", "--config.train.steps=4", SLURM_JOB_ID=str(job),
                   SLURM_SUBMIT_DIR=str(REPO), FAKE_PYTHON_MODE="distributed", JAXFT_WORKDIR="/runs/x")
    assert out.returncode == 0, out.stderr[-3000:]
    srun = fake.calls("srun")
    assert len(srun) == 1
    assert srun[0]["argv"][:4] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "--export=ALL", "bash"]
    tasks = sorted(fake.calls("python"), key=lambda c: c["tag"])
    assert [c["process"] for c in tasks] == [[0, 2], [1, 2]]  # jax.distributed.initialize() from SLURM's variables
    for i, call in enumerate(tasks):
        assert call["argv"] == ["-m", "jaxft.main", "--distributed", "--config", "configs/lm.py",
                                "--workdir", "/runs/x", "--config.train.steps=4"]
        assert call["cwd"] == str(REPO)
        env = call["env"]
        assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"  # all 4 GPUs of the node, not just SLURM_LOCALID's
        assert env["SLURM_PROCID"] == str(i) and env["SLURM_NTASKS"] == "2"
        assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.92"
        assert env["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"


def test_gpu_sh_dry_run_and_run(fake):
    out = fake.run("gpu.sh", "--dry-run", "configs/lm.py", "--config.sample.prompt=a b", JAXFT_WORKDIR="runs/g")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "XLA_PYTHON_CLIENT_MEM_FRACTION=0.92", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
        f"+ source {fake.root / 'venv'}/bin/activate",
        "+ python -m jaxft.main --config configs/lm.py --workdir runs/g '--config.sample.prompt=a b'"]
    out = fake.run("gpu.sh", "configs/lm.py:smoke", JAXFT_COORDINATOR="host0:1234", JAXFT_NUM_PROCESSES="2",
                   JAXFT_PROCESS_ID="1")
    assert out.returncode == 0, out.stderr
    (call,) = fake.calls("python")
    assert call["argv"] == ["-m", "jaxft.main", "--distributed", "--config", "configs/lm.py:smoke"]
    assert call["cwd"] == str(REPO)
    assert {k: call["env"][k] for k in ("JAXFT_COORDINATOR", "JAXFT_NUM_PROCESSES", "JAXFT_PROCESS_ID")} == \
        {"JAXFT_COORDINATOR": "host0:1234", "JAXFT_NUM_PROCESSES": "2", "JAXFT_PROCESS_ID": "1"}
    out = fake.run("gpu.sh", "configs/lm.py", JAXFT_COORDINATOR="host0:1234")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: JAXFT_COORDINATOR is set but JAXFT_NUM_PROCESSES is not"


def test_tpu_setup_from_git_on_fake_workers(fake):
    origin = fake.root / "origin"
    origin.mkdir()
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    for version in ("one", "two"):
        (origin / "VERSION").write_text(version)
        subprocess.run([*git, "add", "VERSION"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", version], check=True)
        if version == "one":
            subprocess.run([*git, "tag", "v1"], check=True)
    for ref, expected in (("v1", "one"), ("main", "two")):  # a second setup moves the existing clones
        out = fake.run("tpu_vm_pod.sh", "setup", *TPU, "--git", f"file://{origin}", "--ref", ref)
        assert out.returncode == 0, out.stderr
        for w in ("w0", "w1"):
            assert (fake.workers / w / "jaxft" / "VERSION").read_text() == expected
    assert (fake.workers / "w1" / "pip.log").read_text().splitlines()[-1] == "install -q -e .[tpu] gcsfs"
