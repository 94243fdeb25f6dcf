"""check-seq-len: the reference's report on prepared records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxft.recipes.movielens import encoding
from jaxft.recipes.movielens.cli import main

CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "movielens.py")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFT_CACHE_DIR", str(tmp_path / "cache"))


def _expected(path, lengths, mode, percentiles=(50, 90, 95, 99, 100)):
    arr = np.asarray(lengths, float)
    lines = [f"Measured {len(arr)} samples from {path} ({mode}).", f"min: {arr.min():.2f}", f"max: {arr.max():.2f}",
             f"mean: {arr.mean():.2f}"]
    return lines + [f"p{p}: {np.percentile(arr, p):.2f}" for p in percentiles]


def test_characters(prepared_dir, capsys):
    assert main(["check-seq-len", "--config", f"{CONFIG}:smoke", "--data-dir", str(prepared_dir), "--char-only",
                 "--percentiles", "50,90"]) == 0
    path = prepared_dir / "train.json"
    records = json.loads(path.read_text())
    # the reference: the message contents (system, instruction + blank line + input, answer) joined by newlines
    lengths = [len(r["system"]) + 1 + len(r["instruction"]) + 2 + len(r["input"]) + 1 + len(r["output"])
               for r in records]
    assert capsys.readouterr().out.splitlines() == _expected(path, lengths, "characters", (50, 90))


def test_tokens_and_truncation_count(prepared_dir, capsys):
    assert main(["check-seq-len", "--config", f"{CONFIG}:smoke", "--data-dir", str(prepared_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    path = prepared_dir / "train.json"
    from jaxft.config import load_config_file
    from jaxft.recipes.movielens.recipe import load_tokenizer

    config = load_config_file(f"{CONFIG}:smoke")
    config.data.dir = str(prepared_dir)
    tok = load_tokenizer(config, prepared_dir)
    records = json.loads(path.read_text())
    # the whole rendered conversation = the training encoding plus the template's final newline
    lengths = [len(encoding.encode_record(tok, r, 10_000).input_ids) + 1 for r in records]
    assert out[:-1] == _expected(path, lengths, "tokens")
    cutoff = int(config.data.cutoff_len)
    over = sum(n > cutoff for n in lengths)
    assert out[-1] == f"over cutoff_len={cutoff}: {over} ({100 * over / len(lengths):.1f}%)"


def test_missing_data_is_one_line(tmp_path, capsys):
    assert main(["check-seq-len", "--config", f"{CONFIG}:smoke", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'data.dir':") and "train.json not found" in err
