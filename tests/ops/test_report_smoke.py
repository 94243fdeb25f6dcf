"""The report of a real run: lm:smoke through python -m jaxft.main, then python -m jaxft.report on its workdir."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.test_report import assert_png_with_content

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a real training run with two evals and samples: about a minute on a loaded 2-core CPU
def test_report_of_a_smoke_run(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jaxft.main", "--config", "configs/lm.py:smoke", "--workdir",
                           str(workdir), "--config.train.log_every=1", "--config.sample.prompt=The return value"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rebuilt = subprocess.run([sys.executable, "-m", "jaxft.report", str(workdir)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = workdir / "report"
    assert rebuilt.stdout.strip() == str(report / "report.md")
    for name in ("train_loss.png", "learning_rate.png", "eval.png", "tokens_per_s.png"):
        assert_png_with_content(report / name)
    md = (report / "report.md").read_text()

    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert f"- train loss: {train[0]['loss']:.4g} (step 1) → {train[-1]['loss']:.4g} (step 6)" in md
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:  # the eval table, one row per eval
        assert f"| {r['step']}" in md and f"| {r['loss']:.4g} |" in md
    samples = [r for r in rows if r["split"] == "samples"]
    assert {r["step"] for r in samples} == {3, 6}
    for r in samples:
        assert r["text"].startswith("The return value")
        assert f"step {r['step']}, `{r['name']}`:\n\n```\n{r['text']}\n```" in md
