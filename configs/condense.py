"""Condense: train an encoder LLM (LoRA) + condense tokens + projector so a frozen decoder LLM can
reconstruct and continue a text (or answer about it) from its condensed states.

    python -m jaxft.main --config configs/condense.py:demo     # offline, tiny random models, ~2 min on 2 CPU cores
    python -m jaxft.main --config configs/condense.py:smol     # offline, SmolLM2-135M-Instruct on both sides
    python -m jaxft.main --config configs/condense.py:seed     # Llama-3.2-1B -> frozen Mistral-7B-Instruct-v0.2
    python -m jaxft.main --config configs/condense.py:test \
        --config.encoder.path=/path/to/small-llama --config.decoder.path=/path/to/small-mistral
    python -m jaxft.main --config configs/condense.py:seed_gist --config.data.path=chats.jsonl

Presets: ``demo`` (the default) builds a small Llama-shaped encoder and Mistral-shaped decoder with
random weights and trains on prose from Python's own docstrings, with different tokenizers on the
two sides; ``smoke`` runs a few steps of tiny models (the contract test); ``smol`` is a real
pretrained model offline; ``seed`` is the reference trainer's R1 setting (``REFERENCE_R1``: the
instruction objective on Condense-AI/benchmark-condense-v0.1, batch 1); ``test`` runs a few steps on
small real checkpoints; ``seed_gist`` is the reference's later single-model gist design (4c5c879,
``condense.design=gist``: Llama-3.1-8B-Instruct as compressor and frozen target).
"""

from ml_collections import ConfigDict

from jaxft.config import base_config, data_section, lora_section, model_section, run_preset, smollm2_path

PRESETS = ("demo", "smoke", "smol", "seed", "test", "seed_gist")


def _condense_section() -> ConfigDict:
    k = ConfigDict()
    # The layout: the encoder reads a text's first max_tokens tokens in num_segments equal segments
    # and condenses them into max_tokens / compression_ratio states in all (an equal share per
    # segment); the text after them is the continuation target once every segment is read.
    k.max_tokens = 4096
    k.compression_ratio = 8.0  # max_tokens / total condensed states
    k.num_segments = 1
    k.max_decoder_tokens = 6144  # decoder tokens of the whole text (condensed context + remainder)
    k.max_continuation_tokens = 0  # cap on each continuation target; 0: score the whole rest of the text
    k.max_characters = 40_000  # texts are cut here first (0: no cut)
    k.min_characters = 0  # shorter texts are dropped (and counted)
    k.projector = "reference"  # reference: LayerNorm(last two encoder hidden states) -> linear | linear_norm
    # Where the condense tokens sit: spread (token j of n at ceil((j+1)·len/n) - 1, over the segment's len
    # real tokens) | after_padding (at L + j after the L padded slots of the segment, as the reference's R1)
    k.positions = "spread"
    k.decay_all = False  # True: weight decay on every trainable leaf (torch AdamW over the reference's groups)
    k.init_from = ""  # a reference modules.pt (or a directory holding it, with its PEFT adapter) to start from
    # Demo-only switch: also train the decoder's weights. A random frozen decoder cannot be steered
    # through its inputs in a few hundred steps (measured, 150 demo steps: with init std 0.02 its
    # logits hardly move; with std 0.3 the AE loss only goes 12.2 -> 10.7 at ~0% token accuracy),
    # so the demo trains it; with a real pretrained decoder leave this off.
    k.train_decoder = False
    k.objectives = ConfigDict(dict(ae=1.0, continuation=1.0, instruction=0.0))  # weights of the loss mix
    # The instruction objective reads records with these columns (the reference's
    # Condense-AI/benchmark-condense-v0.1): condense the context, read the prompt, score the completion.
    k.instruction = ConfigDict(dict(context_column="context", prompt_column="activation_prompt",
                                    completion_column="expected_completion", max_prompt_tokens=128,
                                    max_completion_tokens=512))
    k.samples = ConfigDict(dict(max_new_tokens=128))
    # condense: encoder + condense tokens + projector -> decoder (above); gist: the reference's single-model
    # gist design (jaxft/recipes/condense/gist.py), laid out by k.gist
    k.design = "condense"
    k.gist = ConfigDict(dict(span_tokens=256, gist_tokens=128, max_tokens=1024, num_flags=1, min_characters=2000))
    return k


def _decoder_section(**overrides) -> ConfigDict:
    d = model_section(**overrides)
    d.remat_group = 1  # k > 1: also remat the layers in groups of k (keeps L/k + k layer inputs, not L; +1 forward)
    return d


def _tiny(model_type: str, hidden: int, layers: int, **extra) -> ConfigDict:
    return ConfigDict(dict(
        model_type=model_type, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
        rope_theta=10000.0, initializer_range=0.02, **extra))


def get_config(preset: str = "demo") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"configs/condense.py: unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    c = base_config()
    c.recipe = "condense"
    c.encoder = model_section(path="meta-llama/Llama-3.2-1B", dtype="bfloat16", compute_dtype="bfloat16",
                              remat="full")
    # The loss backpropagates through the whole decoder into the condensed states: remat it too.
    c.decoder = _decoder_section(path="mistralai/Mistral-7B-Instruct-v0.2", dtype="bfloat16",
                                 compute_dtype="bfloat16", remat="full")
    c.lora = lora_section(rank=128, alpha=128.0)
    c.data = data_section(hf_dataset="wikimedia/wikipedia", hf_config="20231101.en", streaming=True,
                          max_records=200_000, validation_fraction=0.01)
    c.condense = _condense_section()

    # The reference's optimizer: AdamW, weight decay 1e-5 on everything, constant rates per group.
    c.optim.groups = ConfigDict({name: ConfigDict({"lr": lr}) for name, lr in (
        ("condense_tokens", 1e-5), ("projector", 1e-4), ("lora", 1e-4), ("markers", 1e-4))})
    c.optim.max_grad_norm = 1.0
    c.condense.decay_all = True
    run_preset(c, schedule="constant", peak_lr=1e-4, warmup_steps=0, weight_decay=1e-5, steps=20_000, batch_size=8,
               every=500, eval_batches=13)  # ~100 validation texts, as the reference's limit_val_batches=100 at batch 1
    c.train.early_stopping.metric = "loss"  # the total validation loss: AE + continuation (+ instruction)
    c.export.source = "best"
    c.loss.chunk_size = 1024

    if preset == "seed":
        _seed(c)
    elif preset == "demo":
        _demo(c)
    elif preset == "smoke":
        _smoke(c)
    elif preset == "smol":
        _smol(c)
    elif preset == "test":
        _test(c)
    elif preset == "seed_gist":
        _seed_gist(c)
    return c


# The reference trainer's first released state ("R1"), condenses/condense-trainer at this commit
# (train.py, condense_trainer_core/condense_core.py, condense_trainer_core/data/subnet_synthetic_dataset.py).
REFERENCE_R1 = "07781116e377d1269ff08d31cb27a04a3707c7da"


def _seed(c: ConfigDict) -> None:
    # R1: Llama-3.2-1B (LoRA r128/alpha128 on the seven projections) condenses a context of 4096 tokens
    # into 512 states for the frozen Mistral-7B-Instruct-v0.2, trained on the instruction objective alone
    # ([states][activation_prompt] -> expected_completion) over Condense-AI/benchmark-condense-v0.1, batch 1,
    # 10 epochs, a validation of 100 records every 500 steps.
    c.data = data_section(hf_dataset="Condense-AI/benchmark-condense-v0.1", validation_fraction=0.1)
    k = c.condense
    k.objectives.update(dict(ae=0.0, continuation=0.0, instruction=1.0))
    # R1 runs the encoder without position ids over [context padded to 4096][512 condense tokens]:
    # the condense tokens sit at 4096..4607.
    k.positions = "after_padding"
    # R1 reads prompt + completion as one string of at most 4096 decoder tokens; here the two budgets add
    # up to the same 4096.
    k.instruction.update(dict(max_prompt_tokens=512, max_completion_tokens=3584))
    k.samples.max_new_tokens = 100  # R1's validation generations
    c.train.epochs = 10.0
    run_preset(c, batch_size=1, log_every=5, every=500, eval_batches=100)  # limit_val_batches=100 at batch 1


def _random_pair(c: ConfigDict, hidden: int, layers: int, enc_tokenizer: str, dec_tokenizer: str) -> None:
    c.encoder = model_section(tokenizer=enc_tokenizer,
                              random_init=_tiny("llama", hidden, layers, tie_word_embeddings=True))
    c.decoder = _decoder_section(tokenizer=dec_tokenizer,
                                 random_init=_tiny("mistral", hidden, layers, tie_word_embeddings=False,
                                                   sliding_window=None))
    c.data = data_section(validation_fraction=0.02)


def _demo(c: ConfigDict) -> None:
    # A different vocabulary on each side: exercises the offset mapping.
    _random_pair(c, 128, 2, "demo:bpe:2048", "demo:unigram:1024")
    k = c.condense
    k.train_decoder = True
    k.max_tokens = 48  # 3 segments of 16 tokens, 8 condensed states each -> continuation levels 1, 2, 3
    k.compression_ratio = 2.0
    k.num_segments = 3
    k.max_decoder_tokens = 96
    k.max_continuation_tokens = 16
    k.max_characters = 800
    k.projector = "linear_norm"
    k.decay_all = False
    # Measured over 500 steps: with weight 1 the short run mostly teaches the decoder the language
    # (AE and continuation losses fall together); at 0.25 the AE loss falls below the continuation
    # loss and reconstructions start to depend on the condensed states.
    k.objectives.continuation = 0.25
    c.lora.update(dict(rank=16, alpha=32.0))
    k.samples.max_new_tokens = 80
    for name in ("lora", "condense_tokens", "projector", "markers"):
        c.optim.groups[name].lr = 2e-3
    # peak_lr is also the trained decoder's rate (a group with no override); eval at start: the untrained
    # losses, as the "before" of the summary line
    run_preset(c, schedule="warmup_cosine", peak_lr=2e-3, weight_decay=0.0, warmup_steps=20, steps=400,
               batch_size=16, log_every=20, every=200, eval_batches=4, eval_at_start=True)
    c.loss.chunk_size = 0


def _smoke(c: ConfigDict) -> None:
    _random_pair(c, 32, 2, "demo:byte", "demo:byte")
    c.data.max_records = 40
    c.data.validation_fraction = 0.1
    k = c.condense
    k.max_tokens = 32  # 2 segments of 16 bytes, 4 condensed states each
    k.compression_ratio = 4.0
    k.num_segments = 2
    k.max_decoder_tokens = 64
    k.max_continuation_tokens = 16
    k.max_characters = 200
    k.samples.max_new_tokens = 4
    c.lora.update(dict(rank=4, alpha=8.0))
    run_preset(c, peak_lr=1e-3, steps=4, batch_size=2, log_every=1, every=2, eval_batches=1)
    c.loss.chunk_size = 0


def _smol(c: ConfigDict) -> None:
    # SmolLM2-135M-Instruct (GGUF, offline) as the LoRA'd encoder and the frozen decoder, on the demo
    # corpus (texts of more than 32 tokens): 32 tokens condensed into 16 states (2x), then the next
    # 24 tokens continued from them. Sized for a shared 2-core CPU.
    path = smollm2_path()
    c.encoder = model_section(path=path)
    c.decoder = _decoder_section(path=path)
    c.data = data_section(validation_fraction=0.02)
    k = c.condense
    k.max_tokens = 32
    k.compression_ratio = 2.0
    k.num_segments = 1
    k.max_decoder_tokens = 64
    k.max_continuation_tokens = 24
    k.max_characters = 1_000
    k.samples.max_new_tokens = 24
    c.lora.update(dict(rank=16, alpha=32.0))
    # A short run: rates well above the reference's, after a short warmup (2e-3 everywhere diverged).
    for name, lr in (("condense_tokens", 1e-3), ("projector", 5e-4), ("lora", 5e-4), ("markers", 1e-3)):
        c.optim.groups[name].lr = lr
    c.condense.decay_all = False
    run_preset(c, warmup_steps=10, weight_decay=0.0, steps=80, batch_size=4, log_every=5, every=40, eval_batches=3,
               eval_at_start=True)
    c.loss.chunk_size = 0


def _test(c: ConfigDict) -> None:
    # Mirrors the seed's quick check: real (small) checkpoints given on the command line, a few steps.
    for section in (c.encoder, c.decoder):
        section.update(dict(path="", dtype="float32", compute_dtype="float32", remat="none"))
    c.data = data_section(validation_fraction=0.05)
    k = c.condense
    k.max_tokens = 256
    k.compression_ratio = 8.0
    k.num_segments = 2
    k.max_decoder_tokens = 384
    k.max_continuation_tokens = 64
    k.max_characters = 3_000
    k.samples.max_new_tokens = 32
    c.lora.update(dict(rank=16, alpha=16.0))
    run_preset(c, steps=10, batch_size=2, log_every=1, every=5, eval_batches=2)


def _seed_gist(c: ConfigDict) -> None:
    # The reference's default branch at 4c5c879 (Jan 2025, config/test.yaml, compress/lit.py, train.py): one
    # LLM as LoRA'd compressor and frozen target, 128 gist tokens per 256-token span of a 1024-token text,
    # auto-encoding + completing, AdamW lr 1e-4 with weight decay 0.1 on everything, batch 1, one epoch.
    llm = "meta-llama/Llama-3.1-8B-Instruct"
    c.encoder = model_section(path=llm, dtype="bfloat16", compute_dtype="bfloat16", remat="full")
    c.decoder = _decoder_section(path=llm, dtype="bfloat16", compute_dtype="bfloat16")  # the same LLM, not reloaded
    c.lora = lora_section(rank=256, alpha=256.0, dropout=0.1)
    # Texts: each conversation rendered by the LLM's chat template in a `text` column (data.path); kept when
    # longer than 2000 characters; 10% validation.
    c.data = data_section(validation_fraction=0.1)
    k = c.condense
    k.design = "gist"
    k.objectives = ConfigDict(dict(ae=1.0, continuation=1.0, instruction=0.0))
    k.decay_all = True
    c.optim.groups = ConfigDict({name: ConfigDict({"lr": 1e-4}) for name in ("lora", "gist_tokens", "flags")})
    c.optim.max_grad_norm = 1.0
    run_preset(c, schedule="constant", peak_lr=1e-4, warmup_steps=0, weight_decay=0.1, batch_size=1, every=500,
               eval_batches=100)
    c.train.epochs = 1.0
    c.export.source = "last"
    k.samples.max_new_tokens = 65  # lit.py generate: a first token, then up to max_length=64 more
    c.loss.chunk_size = 256  # 256 x 128,256 float32 logits a chunk: the step plans within 16 GiB a device
