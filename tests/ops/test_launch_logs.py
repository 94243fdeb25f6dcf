"""``launch/tpu_vm_pod.sh logs``: the one gcloud command it runs, and worker 0's log streamed back."""

import subprocess

from tests.ops.test_launch import TPU, fake  # noqa: F401 - the fixture: fake gcloud and two workers on PATH

LOG_COMMAND = "log=~/jaxft-runs/r3.log; pid=$(cat ~/jaxft-runs/r3.pid); tail -n 200 -F --pid=$pid $log"


def test_logs_streams_worker_0s_log_through_one_ssh(fake):  # noqa: F811
    finished = subprocess.Popen(["true"])  # a run that has ended: tail stops after printing its log
    finished.wait()
    for w, text in (("w0", "worker 0: step 1\nworker 0: step 2\n"), ("w1", "worker 1: step 1\n")):
        runs = fake.workers / w / "jaxft-runs"
        runs.mkdir()
        (runs / "r3.log").write_text(text)
        (runs / "r3.pid").write_text(f"{finished.pid}\n")

    out = fake.run("tpu_vm_pod.sh", "logs", *TPU, "--run-id", "r3")
    assert out.returncode == 0, out.stderr
    assert [c["argv"] for c in fake.calls("gcloud")] == [
        ["compute", "tpus", "tpu-vm", "ssh", "pod1", "--zone=us-central2-b", "--worker=0", f"--command={LOG_COMMAND}"]]
    assert "worker 0: step 1\nworker 0: step 2\n" in out.stdout and "worker 1" not in out.stdout

    dry = fake.run("tpu_vm_pod.sh", "--dry-run", "logs", *TPU, "--run-id", "r3")
    assert dry.stdout.splitlines() == [f"+ gcloud compute tpus tpu-vm ssh pod1 --zone=us-central2-b --worker=0 "
                                       f"'--command={LOG_COMMAND}'"]
    assert len(fake.calls("gcloud")) == 1  # the dry run ran nothing

    missing = fake.run("tpu_vm_pod.sh", "logs", *TPU)
    assert missing.returncode != 0 and missing.stderr.strip().endswith("--run-id is required for logs")
