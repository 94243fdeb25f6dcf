"""The seed preset's whole path with only the sizes swapped: a tiny random Qwen2 checkpoint written by
transformers with the Qwen2.5 tokenizer, cnn_dailymail 3.0.0's schema (article, highlights, id; train,
validation and test splits) in a local datasets directory, LoRA r16 with dropout on the seven projections,
2 steps, an eval with its samples, the export, and every command that reads the export (evaluate on the
test split, evaluate --base, generate) plus scaling."""

from __future__ import annotations

import json

import pytest

from jaxft.recipes.summarize.cli import main
from tests.configs import recipe_config


@pytest.fixture
def qwen25_checkpoint(tmp_path):
    import torch
    import transformers

    from jaxft.tokenization.qwen import qwen_tokenizer

    tok = qwen_tokenizer()
    tok.eos_token = "<|endoftext|>"  # Qwen2.5-0.5B (the base model) ends texts with <|endoftext|>
    config = transformers.Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                      tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "qwen25")
    tok.save_pretrained(tmp_path / "qwen25")
    return tmp_path / "qwen25"


def _cnn_dailymail(directory, sizes=(16, 4, 3)):
    import datasets

    def split(n, tag):
        return datasets.Dataset.from_dict({
            "article": [f"(CNN) -- The {tag} story number {i} is about a cat that sat on mat {i} in London. "
                        f"Officials said on Monday the cat had sat there for {i + 2} days." for i in range(n)],
            "highlights": [f"Cat {i} sat on a mat .\nOfficials counted {i + 2} days ." for i in range(n)],
            "id": [f"{tag}{i:040x}"[-40:] for i in range(n)]})

    datasets.DatasetDict({name: split(n, name) for name, n in zip(("train", "validation", "test"), sizes)}
                         ).save_to_disk(directory)
    return directory


@pytest.mark.slow
def test_seed_path(qwen25_checkpoint, tmp_path, capsys):
    from jaxft.recipes.summarize import build, load_export
    from jaxft.train.trainer import Trainer

    c = recipe_config("summarize", "seed")
    assert c.lora.rank == 16 and c.lora.dropout == 0.1 and len(c.lora.targets) == 7 and c.data.hf_config == "3.0.0"
    assert (c.data.document_column, c.data.summary_column, c.summarize.validation_split) == (
        "article", "highlights", "validation")
    c.model.path = str(qwen25_checkpoint)
    c.data.hf_dataset, c.data.hf_config = str(_cnn_dailymail(tmp_path / "cnn_dailymail")), ""
    c.summarize.update(max_input_length=24, max_target_length=8, max_new_tokens=4, eval_samples=2)  # the sizes
    c.summarize.epochs = 0.5  # of the 16 pairs read, at batch 4: 2 steps
    c.train.update(eval_every=2, eval_batches=1, log_every=1)
    c.optim.schedule.warmup_steps = 1
    c.checkpoint.update(every=2, async_save=False)

    trainer = Trainer(c, tmp_path / "run", build)
    printed = capsys.readouterr().out
    assert "CHINCHILLA SCALING LAWS ANALYSIS (LoRA)" in printed and "Base Model Size:" in printed
    assert c.train.steps == 2
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2 and {"rouge1", "rouge2", "rougeL", "distinct_share"} <= set(metrics)
    samples = trainer.task.samples_fn(trainer.state["params"], trainer.task.frozen)
    assert set(samples) == {"summary_0", "summary_1"} and "(reference: 'Cat " in samples["summary_0"]
    export = trainer.export()
    loaded = load_export(str(export))
    assert loaded.settings["base_model"] == str(qwen25_checkpoint) and not (export / "base").exists()
    assert loaded.tokenizer.eos_token == "<|endoftext|>"
    adapter_config = json.loads((export / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["base_model_name_or_path"] == str(qwen25_checkpoint)
    results = json.loads((export / "evaluation_results.json").read_text())
    assert results["constant_baseline"]["summary"].startswith("Cat ") and results["num_samples"] == 2

    # the reference scored its test split: --split picks one of the run's own dataset
    assert main(["evaluate", "--export", str(export), "--split", "test", "--eval-samples", "3"]) == 0
    scored = json.loads((export / "evaluate_test.json").read_text())
    assert sorted(s["target_summary"].split("\n")[0] for s in scored["samples"]) == [
        "Cat 0 sat on a mat .", "Cat 1 sat on a mat .", "Cat 2 sat on a mat ."]
    assert all(s["original_text"].startswith("(CNN) -- The test story") for s in scored["samples"])
    assert main(["evaluate", "--export", str(export), "--base", "--eval-samples", "2"]) == 0
    assert (export / "evaluate_validation_base.json").is_file() or any(export.glob("evaluate_*_base.json"))
    (tmp_path / "article.txt").write_text("(CNN) -- A dog ran across a bridge in Paris on Tuesday.\n")
    capsys.readouterr()
    assert main(["generate", "--export", str(export), "--file", str(tmp_path / "article.txt"), "--greedy"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["scaling", "--params", "8.8e6", "--tokens", "6.9e8"]) == 0
    assert "CHINCHILLA" in capsys.readouterr().out
