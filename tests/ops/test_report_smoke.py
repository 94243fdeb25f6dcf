"""A real run (lm:smoke through python -m jaxft.main): python -m jaxft.report on its workdir, and what a hub
push of its export would upload."""

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

    # what `python -m jaxft.export push` would upload of this run's export loads in transformers
    import numpy as np
    import torch
    import transformers

    from jaxft import export

    hub = tmp_path / "hub"
    for path, src in export.upload_plan(workdir / "export", "someone/smoke"):
        (hub / path).parent.mkdir(parents=True, exist_ok=True)
        (hub / path).write_bytes(src if isinstance(src, bytes) else src.read_bytes())
    assert sorted(p.name for p in (hub / "merged").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.json", "tokenizer_config.json"]
    card = (hub / "README.md").read_text()
    assert "No base model is recorded for `adapter/`" in card
    model = transformers.AutoModelForCausalLM.from_pretrained(hub / "merged").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hub / "merged")
    ids = torch.tensor([tokenizer("The return value")["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits.numpy()
    import jaxft

    cfg, params = jaxft.load_pretrained(hub / "merged")
    ours = np.asarray(jaxft.logits(cfg, params, ids.numpy().astype(np.int32)))
    assert np.abs(ours - logits).max() <= 1e-4
