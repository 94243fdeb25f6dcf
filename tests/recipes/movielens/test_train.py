"""The seed preset's path (QLoRA: LoRA over an NF4 double-quantized base) on a tiny checkpoint and
prepared records: build, train, eval metrics, export, reload, compare; and the epochs rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxft.config import load_config_file
from jaxft.recipes.movielens import encoding, load_export
from jaxft.recipes.movielens.compare import compare

CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "movielens.py")


@pytest.fixture
def tiny_checkpoint(tmp_path, demo_tokenizer_dir):
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))
    config = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _seed_config(checkpoint, tokenizer_dir, data_dir, tmp_path):
    c = load_config_file(f"{CONFIG}:seed")
    c.model.path = str(checkpoint)
    c.model.tokenizer = str(tokenizer_dir)
    c.model.dtype = c.model.compute_dtype = "float32"
    c.model.remat = "none"
    c.data.dir = str(data_dir)
    c.movielens.cache_dir = str(tmp_path / "tokens")
    c.train.batch_size = 4
    c.optim.accum_steps = 2
    c.movielens.eval_steps = 1
    c.checkpoint.async_save = False
    return c


@pytest.mark.slow
def test_qlora_train_export_compare(tiny_checkpoint, demo_tokenizer_dir, prepared_dir, tmp_path, caplog):
    import logging

    from jaxft.train.trainer import Trainer

    from jaxft.recipes.movielens import build

    import shutil

    data = tmp_path / "data"  # the prepared records, one eval answer made Yes so that F1 can be anything
    shutil.copytree(prepared_dir, data)
    eval_records = json.loads((data / "eval.json").read_text())
    eval_records[0]["output"] = "Yes"
    (data / "eval.json").write_text(json.dumps(eval_records))
    # every training answer Yes, at a large learning rate: the adapter moves the untrained model's No bias, so
    # that the eval predicts Yes for some records and its F1 is not the 0 of a model that always says No
    train_records = json.loads((data / "train.json").read_text())
    (data / "train.json").write_text(json.dumps([dict(r, output="Yes") for r in train_records]))
    c = _seed_config(tiny_checkpoint, demo_tokenizer_dir, data, tmp_path)
    c.optim.schedule.peak_lr = 0.05
    c.export.source = "last"  # the parameters of the last eval, whose metrics are checked below
    c.movielens.epochs = 2.0  # 4 train records, batch 4: 2 steps; warmup ceil(0.03 * 2) = 1
    trainer = Trainer(c, tmp_path / "run", build)
    assert int(c.train.steps) == 2 and int(c.optim.schedule.warmup_steps) == 1
    base = trainer.task.frozen["base"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert type(base).__name__ == "QuantizedKernel"  # NF4 base
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2 and {"accuracy", "f1", "loss"} <= set(metrics)
    export = trainer.export()
    settings = json.loads((export / "movielens.json").read_text())
    assert settings["tuned"] == "adapter" and settings["double_quant"]
    assert settings["base_model"] == str(tiny_checkpoint)
    assert (export / "adapter" / "adapter_config.json").is_file()
    loaded = load_export(str(export))
    assert (loaded.settings["yes_token_id"], loaded.settings["no_token_id"]) == encoding.answer_token_ids(
        loaded.tokenizer)
    # the logged accuracy and F1 are those of p(Yes) scored independently on the exported model
    import numpy as np

    from jaxft.recipes.movielens.compare import score_records
    from jaxft.recipes.movielens.metrics import scores

    encoded = encoding.encode_records(loaded.tokenizer, eval_records, int(loaded.settings["cutoff_len"]))
    yes, no = encoding.answer_token_ids(loaded.tokenizer)
    p_yes = score_records(loaded.cfg, loaded.tuned, encoded, yes, no, 4, loaded.tokenizer.pad_token_id or 0,
                          np.float32)
    want = scores((p_yes > 0.5).astype(int), [int(r["output"] == "Yes") for r in eval_records])
    assert 0 < want["f1"] < 1 and 0 < want["accuracy"] < 1  # a mixed outcome, so a wrong F1 would show
    assert metrics["accuracy"] == pytest.approx(want["accuracy"]) and metrics["f1"] == pytest.approx(want["f1"])
    result = compare(export, prepared_dir / "test_raw.jsonl", output=tmp_path / "preds.jsonl")
    assert result["tuned"]["n"] == 2 and len((tmp_path / "preds.jsonl").read_text().splitlines()) == 2

    # a second build reuses the token cache and says so
    caplog.set_level(logging.INFO, logger="jaxft")
    Trainer(_seed_config(tiny_checkpoint, demo_tokenizer_dir, data, tmp_path), tmp_path / "run2", build)
    assert sum("reused the token cache" in r.getMessage() for r in caplog.records) == 2


def test_missing_data_dir_is_named(tmp_path):
    from jaxft.recipes.movielens.recipe import data_dir

    c = load_config_file(f"{CONFIG}:smoke")
    c.data.dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"config key 'data.dir': .*train\.json not found"):
        data_dir(c)


@pytest.mark.parametrize("preset", ["demo", "smoke", "seed"])
def test_presets_map_reference_keys(preset):
    c = load_config_file(f"{CONFIG}:{preset}")
    assert int(c.train.eval_every) == int(c.movielens.eval_steps)
    assert int(c.checkpoint.every) == int(c.movielens.save_steps)
    assert int(c.checkpoint.keep) == int(c.movielens.save_total_limit)
    assert c.train.early_stopping.metric == "f1" and c.train.early_stopping.mode == "max"
    c.movielens.eval_steps = 7  # one key, both places
    assert int(c.train.eval_every) == 7
    if preset == "seed":
        assert (c.lora.rank, c.lora.alpha, c.lora.dropout) == (16, 64.0, 0.05) and len(c.lora.targets) == 7
        assert (c.optim.schedule.peak_lr, c.movielens.warmup_ratio, c.optim.weight_decay, c.optim.max_grad_norm) == (
            1.5e-4, 0.03, 0.0, 1.0)
        assert (int(c.train.batch_size), int(c.optim.accum_steps), c.movielens.epochs) == (16, 8, 3.0)
        assert (c.model.path, c.model.quantize, c.model.compute_dtype) == ("Qwen/Qwen3-0.6B", "nf4", "bfloat16")
        assert int(c.data.cutoff_len) == 1024 and int(c.movielens.patience) == 5


def test_the_old_double_quant_key_is_refused_naming_the_new_one(capsys):
    from jaxft.main import _precheck_config

    with pytest.raises(SystemExit) as stop:
        _precheck_config(["jaxft.main", f"--config={CONFIG}:seed", "--config.movielens.double_quant=True"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: --config.movielens.double_quant: config key 'movielens.double_quant' "
                                       "was replaced by model.double_quant\n")
    assert load_config_file(f"{CONFIG}:seed").model.double_quant is True  # where the seed sets it
