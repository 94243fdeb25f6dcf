"""The prepared GPU check, on CPU: its dry run, and a tiny run of the steps a CPU can run, through one JSON."""

import json
import subprocess
import sys

import pytest

from jaxft.bench import device_check as dc


def test_dry_run_lists_every_step_and_the_carried_wheels(tmp_path, capsys):
    (tmp_path / "gguf-0.19.0-py3-none-any.whl").write_bytes(b"x" * 3000)
    steps = dc.plan(tiny=False, python="python", folder=tmp_path)
    assert [s.name for s in steps] == ["install", "environment", "parity", "attention", "train", "generate"]
    assert sum(s.timeout_s for s in steps) <= 600  # sized for the 10 minutes of one H100 run
    install = steps[0].argv
    assert {"--no-deps", "--no-index"} <= set(install) and str(tmp_path / "gguf-0.19.0-py3-none-any.whl") in install
    train = steps[4].argv
    assert train[train.index("--model") + 1] == "qwen3-0.6b" and "peft" in train and "bfloat16" in train
    generate = steps[5].argv
    assert generate[generate.index("--batch") + 1] == "32"
    text = dc.dry_run(steps, tmp_path)
    for s in steps:
        assert " ".join(s.argv) in text
    assert "gguf-0.19.0-py3-none-any.whl  3 KiB" in text and "limit 64 MiB" in text


def test_the_cli_dry_run_prints_the_plan():
    proc = subprocess.run([sys.executable, "-m", "jaxft.bench", "device-check", "--dry-run"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "6. generate" in proc.stdout and "carried wheels" in proc.stdout


def test_an_unknown_step_is_one_line_and_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "jaxft.bench", "device-check", "--only", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown step(s) nope" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.4), ("cpu", None)])
def test_bf16_peaks(kind, peak):
    assert dc.bf16_peak_tflops(kind) == peak


def test_figures_from_step_rows():
    rows = {
        "environment": {"result": {"device_kind": "NVIDIA H100 80GB HBM3", "jax": "0.11.2", "bf16_peak_tflops": 989.4}},
        "parity": {"tests": {"passed": 12}},
        "train": {"result": {"tokens_per_s": 50000.0, "peer_tokens_per_s": 25000.0, "ratio_tokens_per_s": 2.0,
                             "model_flops_per_step": 989.4e12 * 0.4, "step_s_median": 1.0, "peer_step_s_median": 2.0,
                             "device_peak_mib": 9000.0, "runs": {"peer": [{"device_peak_mib": 12000.0}]}}},
        "generate": {"result": {"batches": {"1": {"prefill_tokens_per_s": 9.0, "decode_tokens_per_s": 3.0}}}},
        "attention": {"status": "timeout"},
    }
    out = dc.figures(rows)
    assert out["train"]["mfu_of_device_peak"] == pytest.approx(0.4)
    assert out["train"]["peer_mfu_of_device_peak"] == pytest.approx(0.2)
    assert out["train"]["peer_device_peak_mib"] == 12000.0 and out["parity_tests"] == {"passed": 12}
    assert out["generate"] == {"1": {"prefill_tokens_per_s": 9.0, "decode_tokens_per_s": 3.0}}
    assert "attention" not in out


def test_pytest_counts():
    assert dc._pytest_counts("== 3 failed, 40 passed, 1 skipped in 9.1s ==") == {"failed": 3, "passed": 40,
                                                                               "skipped": 1}


@pytest.mark.slow
def test_a_tiny_cpu_run_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "jaxft.bench", "device-check", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {name: row["status"] for name, row in report["steps"].items()} == {
        "environment": "ok", "attention": "ok", "train": "ok", "generate": "ok"}, report["steps"]
    fig = report["figures"]
    assert fig["jax"] and fig["train"]["tokens_per_s"] > 0 and fig["train"]["peer_tokens_per_s"] > 0
    assert set(fig["generate"]) == {"1", "4"}
    for layout in ("right", "holes"):
        assert fig["attention"][layout]["cudnn"]["max_abs_err_vs_f32"] < 0.05
