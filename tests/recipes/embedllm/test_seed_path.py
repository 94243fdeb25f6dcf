"""The ``seed`` preset's own path with only the sizes swapped: a tiny random Qwen3 (transformers, the Qwen
tokenizer), a tiny random Perceiver in the hub's format (config.json + a PerceiverFor* pytorch_model.bin),
and a local dataset in the hub dataset's layout (a ``text`` column of chat-template strings, read as
the reference read it: column detected, turns split on ``<|im_start|>``). Two steps, an eval with
samples, the export, and chat on the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxft.config import load_config_file

pytestmark = pytest.mark.slow  # two compiled steps, an eval, the export and chat (~1-2 min on this CPU)

CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "embedllm.py")
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger"]


def chat_text(messages) -> str:
    """The Qwen chat template's text of ``(role, content)`` messages, as the dataset column holds it."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)


def _conversations(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        word = WORDS[i % len(WORDS)]
        turns = [("system", "You are a helpful assistant."), ("user", f"Please remember {word}."),
                 ("assistant", "Noted."), ("user", "Which word was it?"), ("assistant", f"It was {word}.")]
        out.append(chat_text(turns[int(rng.integers(0, 3)):] if i % 5 else turns[-1:]))  # some single-turn
    return out


@pytest.fixture(scope="module")
def seed_inputs(tmp_path_factory):
    import datasets
    import torch
    import transformers

    from jaxft.tokenization.qwen import qwen_tokenizer

    root = tmp_path_factory.mktemp("seed")
    tok = qwen_tokenizer()
    torch.manual_seed(0)
    qcfg = transformers.Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                    max_position_embeddings=4096, tie_word_embeddings=True,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    transformers.AutoModelForCausalLM.from_config(qcfg).save_pretrained(root / "qwen")
    tok.save_pretrained(root / "qwen")
    pcfg = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=12, num_self_attends_per_block=2,
                                        num_self_attention_heads=2, num_cross_attention_heads=1)
    perceiver = transformers.PerceiverModel(pcfg)
    (root / "perceiver").mkdir()
    pcfg.to_json_file(str(root / "perceiver" / "config.json"))
    state = {f"perceiver.{k}": v for k, v in perceiver.state_dict().items()}  # as a PerceiverFor* model names them
    torch.save(state | {"decoder.decoder.output_adapter.weight": torch.zeros(3, 2)},
               root / "perceiver" / "pytorch_model.bin")
    datasets.Dataset.from_dict({"text": _conversations(40)}).save_to_disk(str(root / "data"))
    return root


def _seed_config(root: Path):
    c = load_config_file(f"{CONFIG}:seed")
    c.model.path = str(root / "qwen")
    c.embedllm.perceiver.path = str(root / "perceiver")
    c.embedllm.perceiver.latent_dim = 16
    c.data.hf_dataset = str(root / "data")
    c.embedllm.epochs = 0.0  # the seed's 3 epochs are 120 steps here; two are enough to run the path
    c.train.steps, c.train.eval_every, c.checkpoint.every = 2, 2, 2
    c.optim.schedule.warmup_steps = 1  # the reference warms up 100 of its steps
    c.checkpoint.async_save = False
    return c


def test_seed_preset_values_are_the_references():
    """CharlieYates1/EmbedLLM at 6d80eb8: train.py's defaults, data_utils.py's separator, the frozen Perceiver."""
    c = load_config_file(f"{CONFIG}:seed")
    e = c.embedllm
    assert (c.train.batch_size, c.train.epochs, c.optim.schedule.peak_lr, c.optim.weight_decay) == \
        (1, 3.0, 5e-5, 0.01)
    assert (c.optim.schedule.warmup_steps, c.optim.schedule.name, c.optim.schedule.end_lr_ratio) == \
        (100, "linear", 0.0)
    assert c.optim.max_grad_norm == 1.0 and c.checkpoint.every == 500
    assert (c.lora.rank, c.lora.alpha, c.lora.dropout, len(c.lora.targets)) == (16, 32.0, 0.1, 7)
    assert (e.separator, e.append_eos, e.max_conversation_tokens, e.max_last_turn_tokens) == \
        ("<|im_start|>", False, 2048, 100)
    assert (e.perceiver.path, e.perceiver.train, e.perceiver.latent_dim) == ("deepmind/multimodal-perceiver",
                                                                           False, 512)
    assert (e.condenser_heads, e.condenser_dropout, c.model.remat) == (8, 0.1, "full")
    assert (c.data.hf_dataset, c.data.text_column) == ("Bossologist/general_Qwen3_ft_dataset", "")


def test_seed_path_trains_evaluates_exports_and_chats(seed_inputs, tmp_path, capsys):
    from jaxft.recipes.embedllm import build, load_export
    from jaxft.recipes.embedllm.cli import main
    from jaxft.train.trainer import Trainer

    trainer = Trainer(_seed_config(seed_inputs), tmp_path / "run", build)
    assert trainer.task.train_records == 38  # 40 conversations, 5% held out
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2 and {"loss", "zero_prefix_loss", "no_history_loss", "accuracy"} <= set(metrics)
    assert np.isfinite(metrics["loss"]) and "recall" not in metrics  # no answer token marked in this data
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    samples = [r for r in rows if r["split"] == "samples"]
    assert len(samples) == 2 and all("<|im_start|>" in r["text"] and " ⟶ " in r["text"] for r in samples)

    export = trainer.export()
    chat = load_export(str(export))
    assert chat.layout.separator == "<|im_start|>" and not chat.model.train_perceiver
    conv = chat_text([("user", "Please remember river."), ("assistant", "Noted."),
                      ("user", "Which word was it?")]) + "<|im_start|>assistant\nIt was"
    expected = chat.reply([conv], max_new_tokens=3)[0]
    capsys.readouterr()
    assert main(["chat", "--export", str(export), "--conversation", conv, "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": conv}) + "\n")
    assert main(["chat", "--export", str(export), "--conversation", str(tmp_path / "c.jsonl"),
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == expected + "\n"
