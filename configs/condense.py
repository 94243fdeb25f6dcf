"""Condense: train an encoder LLM (LoRA) + condense tokens + projector so a frozen decoder LLM can
reconstruct and continue a text from its condensed states.

    python -m jaxft.main --config configs/condense.py:demo     # offline, tiny random models, ~2 min on 2 CPU cores
    python -m jaxft.main --config configs/condense.py:seed \
        --config.condense.encoder=meta-llama/Llama-3.2-1B \
        --config.condense.decoder=mistralai/Mistral-7B-Instruct-v0.2
    python -m jaxft.main --config configs/condense.py:test \
        --config.condense.encoder=/path/to/small-llama --config.condense.decoder=/path/to/small-mistral

Presets: ``demo`` (the default) builds a small Llama-shaped encoder and Mistral-shaped decoder with
random weights and trains on prose from Python's own docstrings, with different tokenizers on the
two sides; ``seed`` is the full setting; ``test`` runs a few steps on small real checkpoints.
"""

from ml_collections import ConfigDict

from jaxft.config import base_config

SEVEN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRESETS = ("demo", "seed", "test")


def _condense_section() -> ConfigDict:
    k = ConfigDict()
    k.encoder = ""  # checkpoint dir / hub id; empty -> random weights from encoder_init
    k.decoder = ""
    # "" -> the model's own tokenizer; "demo:<bpe|unigram|byte>[:vocab_size]" -> a demo tokenizer.
    k.encoder_tokenizer = ""
    k.decoder_tokenizer = ""
    k.encoder_init = ConfigDict()  # HF config keys (vocab size comes from the tokenizer)
    k.decoder_init = ConfigDict()
    k.dtype = "bfloat16"  # storage and compute dtype of both LLMs
    k.quantize_encoder = "none"  # none | nf4 | int8 (frozen base weights)
    k.quantize_decoder = "none"
    k.remat = "none"  # none | full | save_dots
    # Demo-only switch: also train the decoder's weights. A random frozen decoder cannot be steered
    # through its inputs in a few hundred steps (measured, 150 demo steps: with init std 0.02 its
    # logits hardly move; with std 0.3 the AE loss only goes 12.2 -> 10.7 at ~0% token accuracy),
    # so the demo trains it; with a real pretrained decoder leave this off.
    k.train_decoder = False

    k.num_condense_tokens = 512
    k.compression_ratio = 2.0  # segment length = compression_ratio * num_condense_tokens encoder tokens
    k.max_tokens = 4096  # encoder tokens per text (-> number of segments)
    k.max_decoder_tokens = 4096  # decoder tokens per text (the AE target)
    k.max_continuation_tokens = 256
    k.max_characters = 10_000
    k.continuation_weight = 1.0

    k.lora = ConfigDict(dict(rank=128, alpha=128.0, dropout=0.0, targets=SEVEN_TARGETS))

    k.data = ConfigDict()
    k.data.path = ""  # .txt/.jsonl/.json/.csv file, directory or glob
    k.data.hf_dataset = ""  # hub name or local datasets directory
    k.data.hf_config = ""
    k.data.hf_split = "train"
    k.data.text_column = "text"
    k.data.on_error = "raise"  # raise | skip
    k.data.validation_fraction = 0.01
    k.data.max_records = 0  # 0: all

    k.samples = ConfigDict(dict(max_new_tokens=128))
    return k


def get_config(preset: str = "demo") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"configs/condense.py: unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    c = base_config()
    c.recipe = "condense"
    c.condense = _condense_section()
    c.optim.groups = ConfigDict({name: ConfigDict({"lr": lr}) for name, lr in (
        ("lora", 1e-4), ("condense_tokens", 1e-3), ("projector", 1e-3), ("markers", 1e-3))})
    c.optim.schedule.peak_lr = 1e-4
    c.optim.schedule.warmup_steps = 200
    c.optim.weight_decay = 0.01
    c.train.steps = 20_000
    c.train.batch_size = 8
    c.optim.accum_steps = 4
    c.train.eval_every = 500
    c.train.eval_batches = 16
    c.train.early_stopping.metric = "ae_loss"
    c.checkpoint.every = 500
    c.loss.chunk_size = 1024

    if preset == "seed":
        k = c.condense
        k.encoder = "meta-llama/Llama-3.2-1B"
        k.decoder = "mistralai/Mistral-7B-Instruct-v0.2"
        k.remat = "full"  # the loss backpropagates through the whole decoder into the condensed states
        k.data.hf_dataset = "wikimedia/wikipedia"
        k.data.hf_config = "20231101.en"
    elif preset == "test":
        # Mirrors the seed's quick check: real (small) checkpoints given on the command line, a few steps.
        k = c.condense
        k.dtype = "float32"
        k.num_condense_tokens = 32
        k.max_tokens = 256
        k.max_decoder_tokens = 320
        k.max_continuation_tokens = 64
        k.max_characters = 2_000
        k.lora.rank = 16
        k.lora.alpha = 16.0
        k.samples.max_new_tokens = 32
        c.optim.schedule.warmup_steps = 2
        c.train.steps = 10
        c.optim.accum_steps = 1
        c.train.batch_size = 2
        c.train.log_every = 1
        c.train.eval_every = 5
        c.train.eval_batches = 2
        c.checkpoint.every = 5
    elif preset == "demo":
        _demo(c)
    return c


def _demo(c: ConfigDict) -> None:
    k = c.condense
    k.encoder_tokenizer = "demo:bpe:2048"
    k.decoder_tokenizer = "demo:unigram:1024"  # a different vocabulary: exercises the offset mapping
    k.encoder_init = ConfigDict(dict(
        model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_theta=10000.0, initializer_range=0.02))
    k.decoder_init = ConfigDict(dict(
        model_type="mistral", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=10000.0, sliding_window=None, initializer_range=0.02))
    k.dtype = "float32"
    k.train_decoder = True
    k.num_condense_tokens = 8
    k.max_tokens = 48  # 3 segments of 16 tokens -> continuation levels 1 and 2
    k.max_decoder_tokens = 64
    k.max_continuation_tokens = 16
    k.max_characters = 600
    # Measured over 500 steps: with weight 1 the short run mostly teaches the decoder the language
    # (AE and continuation losses fall together); at 0.25 the AE loss falls below the continuation
    # loss and reconstructions start to depend on the condensed states.
    k.continuation_weight = 0.25
    k.lora.rank = 16
    k.lora.alpha = 32.0
    k.data.validation_fraction = 0.02
    k.samples.max_new_tokens = 80
    for name in ("lora", "condense_tokens", "projector", "markers"):
        c.optim.groups[name].lr = 2e-3
    c.optim.schedule.peak_lr = 2e-3  # also the trained decoder's rate (a group with no override)
    c.optim.weight_decay = 0.0
    c.optim.schedule.warmup_steps = 20
    c.train.steps = 400
    c.optim.accum_steps = 1
    c.train.batch_size = 16
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.eval_at_start = True  # the untrained losses, as the "before" of the summary line
    c.checkpoint.every = 200
    c.loss.chunk_size = 0
