"""The seed preset's whole path with only the sizes swapped: a tiny random Qwen3 checkpoint written by
transformers with the Qwen tokenizer and Qwen3's chat template, ratings in ml-latest-small's files
(ratings.csv, movies.csv); prepare with the reference's defaults, 2 steps of QLoRA (NF4 + double
quantization, bf16, batch 2 x 8), an eval with samples, the export, and compare / infer on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxft.recipes.movielens.cli import main
from tests.configs import recipe_config
from tests.tiny import save_qwen3_with_tokenizer
from tests.recipes.movielens.conftest import write_layout

TEMPLATE = Path(__file__).with_name("qwen3_chat_template.json")


@pytest.fixture
def qwen3_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from jaxft.tokenization.qwen import qwen_tokenizer

    tok = qwen_tokenizer()
    tok.chat_template = json.loads(TEMPLATE.read_text(encoding="utf-8"))["chat_template"]
    save_qwen3_with_tokenizer(tmp_path / "qwen3", tok, max_position_embeddings=2048)
    return tmp_path / "qwen3"


def _ratings(users=12, per_user=30, movies=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, users + 1):
        for k, movie in enumerate(rng.choice(np.arange(1, movies + 1), per_user, replace=False)):
            rows.append((user, int(movie), float(rng.integers(1, 11)) / 2, 100 + 7 * k))
    titles = {m: f"Movie Number {m}, The ({1950 + m})" for m in range(1, movies + 1)}
    return rows, titles


@pytest.mark.slow
def test_seed_path(qwen3_checkpoint, tmp_path, capsys):
    from jaxft.train.trainer import Trainer

    from jaxft.recipes.movielens import build, load_export

    ratings, titles = _ratings()
    source = write_layout(tmp_path / "ml-latest-small", "csv", ratings, titles)
    data = tmp_path / "data"
    assert main(["prepare", "--source", str(source), "--output-dir", str(data)]) == 0  # the reference's defaults
    counts = json.loads(capsys.readouterr().out)
    assert counts["train"] == 12 * (30 - 15 - 1 - 1)  # 15 history, one test and one validation candidate per user
    assert main(["check-seq-len", "--config", "configs/movielens.py:seed", "--data-dir", str(data),
                 "--char-only"]) == 0
    assert f"Measured {counts['train']} samples" in capsys.readouterr().out

    c = recipe_config("movielens", "seed")
    assert (c.model.quantize, c.model.double_quant, c.model.compute_dtype) == ("nf4", True, "bfloat16")
    c.model.path = str(qwen3_checkpoint)  # the sizes: everything else is the seed preset's own
    c.data.dir = str(data)
    c.movielens.cache_dir = str(tmp_path / "tokens")
    c.movielens.epochs = 32 / counts["train"]  # 2 steps of 2 x 8
    c.movielens.eval_steps = 2
    c.checkpoint.async_save = False
    trainer = Trainer(c, tmp_path / "run", build)
    assert int(c.train.steps) == 2 and int(c.train.batch_size) == 16 and int(c.optim.accum_steps) == 8
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2 and {"accuracy", "f1", "loss"} <= set(metrics)
    assert set(trainer.task.samples_fn(trainer.state["params"], trainer.task.frozen)) == {"answer_0", "answer_1"}
    export = trainer.export()
    loaded = load_export(str(export))
    assert loaded.settings["base_model"] == str(qwen3_checkpoint) and loaded.settings["double_quant"]
    assert loaded.tokenizer.chat_template == json.loads(TEMPLATE.read_text())["chat_template"]

    test = data / "test_raw.jsonl"
    assert main(["compare", "--export", str(export), "--data", str(test), "--limit", "4",
                 "--output", str(tmp_path / "preds.jsonl")]) == 0
    assert "F1 (Yes positive)" in capsys.readouterr().out
    assert len((tmp_path / "preds.jsonl").read_text().splitlines()) == 4
    assert main(["infer", "--export", str(export), "--data", str(test), "--limit", "2", "--base",
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("base: accuracy") and "\ntuned: accuracy" in out
    prompt = json.loads(test.read_text().splitlines()[0])
    assert main(["infer", "--export", str(export), "--prompt", "\n".join(prompt["history_titles"]),
                 "--greedy", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("tuned: ")
