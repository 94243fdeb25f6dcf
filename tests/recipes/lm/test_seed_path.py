"""The README's real lm setting (the default preset with a Qwen3 checkpoint, a JSONL of texts, LoRA r16) with only
the sizes swapped: a tiny random Qwen3 checkpoint written by transformers with the Qwen tokenizer; 2 steps, an
eval with its sample, the export (PEFT adapter + merged model), `python -m jaxft.export check` on it, and the
exported adapter and merged model read by peft and transformers with the logits jaxft gives."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.configs import recipe_config
from tests.tiny import save_qwen3_with_tokenizer


@pytest.mark.slow
def test_seed_path(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import jax.numpy as jnp
    import transformers

    from jaxft.models.decoder import forward
    from jaxft.recipes.lm import build, load_export
    from jaxft.tokenization.qwen import qwen_tokenizer
    from jaxft.train.trainer import Trainer

    tok = qwen_tokenizer()
    save_qwen3_with_tokenizer(tmp_path / "qwen3", tok, max_position_embeddings=1024)
    rng = np.random.default_rng(0)
    words = ["the", "function", "returns", "a", "list", "of", "values", "when", "called", "with", "names"]
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:
        for _ in range(120):
            f.write(json.dumps({"text": " ".join(rng.choice(words, 40)).capitalize() + "."}) + "\n")

    c = recipe_config("lm", "default")  # README: --config.model.path=... --config.data.path=... --config.lora.rank=16
    c.model.path, c.data.path, c.lora.rank = str(tmp_path / "qwen3"), str(tmp_path / "train.jsonl"), 16
    c.data.seq_len = 64  # the sizes
    c.train.update(steps=2, batch_size=4, eval_every=2, eval_batches=2)
    c.optim.schedule.warmup_steps = 1
    c.optim.schedule.peak_lr = 1e-2  # large enough that two steps move the logits far beyond the comparison's tolerance
    c.sample.prompt, c.sample.max_new_tokens = "The function returns", 4
    c.checkpoint.update(every=2, async_save=False)
    trainer = Trainer(c, tmp_path / "run", build)
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2 and np.isfinite(metrics["loss"])
    sample = trainer.task.samples_fn(trainer.state["params"], trainer.task.frozen)["generation"]
    assert sample.startswith("The function returns")
    export = trainer.export()
    assert (export / "adapter" / "adapter_config.json").is_file() and (export / "merged" / "config.json").is_file()
    check = subprocess.run([sys.executable, "-m", "jaxft.export", "check", str(export)], capture_output=True,
                           text=True, timeout=600)
    assert check.returncode == 0, check.stderr

    ids = np.asarray([tok("The function returns a list of names", add_special_tokens=False)["input_ids"]])
    loaded = load_export(str(export))
    ours, _ = forward(loaded.cfg, loaded.tuned, jnp.asarray(ids, jnp.int32))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3").eval()
    with torch.no_grad():  # before peft wraps the base: PeftModel injects its layers into the model it is given
        untuned = base(torch.as_tensor(ids)).logits.numpy()
    adapted = peft.PeftModel.from_pretrained(base, export / "adapter").eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(export / "merged").eval()
    with torch.no_grad():
        assert np.abs(np.asarray(ours) - untuned).max() > 1e-2  # 2 steps moved the adapter off its zero B
        for model in (adapted, merged):
            np.testing.assert_allclose(np.asarray(ours), model(torch.as_tensor(ids)).logits.numpy(), atol=1e-4)
    assert json.loads((export / "adapter" / "adapter_config.json").read_text())["r"] == 16
