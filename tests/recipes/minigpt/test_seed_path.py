"""The seed preset's whole path with only the sizes swapped: the reference's kind of inputs (a plain-text
corpus file and a SentencePiece model trained with SentencePiece's defaults, as its spm_en8k.model), the
reference block, 2 updates of the seed schedule (AdamW 0.9/0.95, warmup + cosine, accumulation 4, EMA,
bf16 compute), an eval, the export, and every command that reads the export (sample with the reference's
flags, import-pth from the reference's checkpoint layout of the same model)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.configs import recipe_config

WORDS = ("the", "model", "returns", "a", "list", "of", "names", "given", "string", "value", "file", "once",
         "upon", "time", "there", "was", "small", "cat", "who", "liked", "to", "read")


def _corpus(path, lines=600, seed=0):
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 12)).capitalize() + "." for _ in range(lines)) + "\n",
                    encoding="utf-8")
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxft.recipes.minigpt", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_seed_path(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    torch = pytest.importorskip("torch")
    from jaxft.train.trainer import Trainer

    from jaxft.recipes.minigpt import build
    from jaxft.recipes.minigpt.export import load_for_inference

    corpus = _corpus(tmp_path / "en_only.clean.txt")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm_en8k"), vocab_size=60,
                                   minloglevel=2)  # SentencePiece's defaults: unigram, nmt_nfkc
    c = recipe_config("minigpt", "seed")
    assert (c.minigpt.d_model, c.minigpt.n_layer, c.optim.ema_decay, int(c.optim.accum_steps)) == (384, 6, 0.999, 4)
    c.data.path = str(corpus)
    c.model.tokenizer = f"sentencepiece:{tmp_path / 'spm_en8k.model'}"
    c.minigpt.cache_dir = str(tmp_path / "cache")
    c.minigpt.update(d_model=48, n_layer=2, n_head=4, context=32)  # the sizes
    c.minigpt.sample.update(min_new=3, max_new=8)  # within the 32-token context
    c.data.seq_len = 32
    c.train.update(batch_size=8, steps=2, eval_every=2, eval_batches=2)
    c.optim.schedule.warmup_steps = 1
    c.checkpoint.update(every=2, async_save=False)
    trainer = Trainer(c, tmp_path / "run", build)
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2 and np.isfinite(metrics["loss"]) and metrics["loss"] < np.log(60) + 1
    export = trainer.export()
    cfg, params, tok = load_for_inference(export)
    assert cfg.parallel_residual and cfg.norm_type == "layer_norm" and cfg.position_embedding == "sinusoidal"

    sample = _cli("sample", "--ckpt", str(export), "--prompt", "Once upon a time", "--top_p", "0.92",
                  "--min_new", "3", "--max_new", "6", "--rep_penalty", "1.2", "--no_repeat", "5")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("### Prompt 1\nOnce upon a time\n---\n")

    # the reference's checkpoint of these weights (its train.py layout, its DecoderOnlyLM names), imported
    # back, gives the export's logits
    from tests.recipes.minigpt.test_reference_pth import CONFIG, RefLM

    ref = RefLM(cfg.vocab_size, 48, 4, 2, 32, 4).eval()
    w = {k: np.asarray(v, np.float32) for k, v in _reference_state(cfg, params).items()}
    ref.load_state_dict({k: torch.as_tensor(v) for k, v in w.items()}, strict=False)
    torch.save({"model": ref.state_dict(), "config": dict(CONFIG, d_model=48, n_layer=2, n_head=4, n_kv_head=0,
                                                          seq_len=32)}, tmp_path / "ckpt_best.pth")
    imported = _cli("import-pth", "--pth", str(tmp_path / "ckpt_best.pth"), "--spm", str(tmp_path / "spm_en8k.model"),
                    "--out", str(tmp_path / "imported"))
    assert imported.returncode == 0, imported.stderr
    again = _cli("sample", "--ckpt", str(tmp_path / "imported"), "--prompt", "Once upon a time", "--temp", "0",
                 "--min_new", "3", "--max_new", "6")
    greedy = _cli("sample", "--ckpt", str(export), "--prompt", "Once upon a time", "--temp", "0", "--min_new", "3",
                  "--max_new", "6")
    assert again.returncode == greedy.returncode == 0 and again.stdout == greedy.stdout


def _reference_state(cfg, params) -> dict:
    """jaxft's minigpt parameters under the reference's state-dict names (the inverse of import-pth)."""
    layers = params["model"]["layers"]
    names = {"input_layernorm": "n1", "post_attention_layernorm": "n2", ("self_attn", "q_proj"): "mha.q_proj",
             ("self_attn", "k_proj"): "mha.k_proj", ("self_attn", "v_proj"): "mha.v_proj",
             ("self_attn", "o_proj"): "mha.out_proj", ("mlp", "gate_proj"): "ffn.w3", ("mlp", "up_proj"): "ffn.w1",
             ("mlp", "down_proj"): "ffn.w2"}
    out = {"tok_emb.weight": params["model"]["embed_tokens"]["weight"],
           "ln_f.weight": params["model"]["norm"]["weight"], "ln_f.bias": params["model"]["norm"]["bias"]}
    for path, name in names.items():
        node = layers
        for key in (path if isinstance(path, tuple) else (path,)):
            node = node[key]
        for i in range(cfg.num_hidden_layers):
            for leaf, value in node.items():
                value = np.asarray(value[i], np.float32)
                out[f"blocks.{i}.{name}.{'weight' if leaf in ('kernel', 'weight') else leaf}"] = (
                    value.T if leaf == "kernel" else value)
    out["lm_head.weight"] = out["tok_emb.weight"]
    return out
