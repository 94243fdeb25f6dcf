"""Summarisation: LoRA SFT with a boundary-weighted loss, ROUGE by generation, a Chinchilla report.

    python -m jaxft.main --config configs/summarize.py          # = :demo, offline, tiny random Qwen2-shaped model
    python -m jaxft.main --config configs/summarize.py:smol     # offline, LoRA on SmolLM2-135M-Instruct
    python -m jaxft.main --config configs/summarize.py:seed     # Qwen/Qwen2.5-0.5B on cnn_dailymail 3.0.0
    python -m jaxft.main --config configs/summarize.py:seed --config.data.path=train.jsonl \
        --config.data.document_column=text --config.data.summary_column=summary
"""

from ml_collections import ConfigDict, FieldReference

from jaxft.config import base_config, data_section, lora_section, model_section, run_preset, smollm2_path

PRESETS = ("demo", "smoke", "smol", "seed")


def get_config(preset: str = "demo") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (presets: {', '.join(PRESETS)})")
    c = base_config()
    c.recipe = "summarize"
    c.model = model_section(path="Qwen/Qwen2.5-0.5B")
    c.lora = lora_section(rank=16, alpha=32.0, dropout=0.1)  # the seven projections
    # No path and no hf_dataset: the offline docstring pairs (see jaxft.recipes.summarize.data).
    c.data = data_section(hf_dataset="cnn_dailymail", hf_config="3.0.0", document_column="article",
                          summary_column="highlights")
    c.export.merged = False  # also write base + adapter merged into one HF checkpoint

    c.summarize = ConfigDict()
    s = c.summarize
    s.max_input_length = 512  # document tokens kept (the prompt markers are never cut)
    s.max_target_length = 64  # summary tokens kept (EOS is added after)
    s.seq_len = 0  # batch row length; 0: the longest encoded example, rounded up to a multiple of 8
    s.validation_split = "validation"  # split of data.hf_dataset for validation; "" -> data.validation_fraction
    s.validation_path = ""  # a file/dir of validation pairs (with data.path); "" -> data.validation_fraction
    s.use_boundary_detection = True
    s.boundary_loss_weight = 0.1  # lambda
    s.boundary_position_weight = 2.0  # w inside a boundary window
    s.boundary_smooth_window = 4  # positions per window
    s.eval_samples = 10  # validation documents summarised for ROUGE at each eval
    s.eval_batch_size = 8  # documents generated together
    s.greedy = False  # False: the reference's sampling (temperature 0.7, top-p 0.9, top-k 50)
    s.temperature = 0.7
    s.max_new_tokens = 128
    s.demo_document = "body"  # offline pairs: "body" (paragraph minus its first sentence) or "paragraph"
    s.results_path = ""  # also write each eval's evaluation_results.json here ("": only the export's)
    s.scaling_report = True  # print the Chinchilla block for the planned run at start
    s.epochs = FieldReference(3.0)  # = train.epochs; > 0: train.steps = ceil(epochs * pairs read / batch_size)
    c.train.epochs = s.get_ref("epochs")

    # The reference's optimisation: AdamW lr 1e-4, wd 0.01, 100 warmup steps then linear decay,
    # clipping at 1.0, batch 4, 3 epochs; eval every 500 steps, best by validation loss.
    c.optim.max_grad_norm = 1.0
    run_preset(c, schedule="linear", peak_lr=1e-4, warmup_steps=100, end_lr_ratio=0.0, weight_decay=0.01, batch_size=4,
               every=500, eval_batches=50, log_every=50)
    c.train.early_stopping.metric = "loss"  # the boundary-weighted validation loss, as the reference

    if preset == "seed":
        c.model.update(dict(dtype="bfloat16", compute_dtype="bfloat16", remat="full"))
    elif preset in ("demo", "smoke"):
        _demo(c, smoke=preset == "smoke")
    elif preset == "smol":
        # A real pretrained chat model, offline: SmolLM2-135M-Instruct (GGUF), LoRA-tuned on the docstring pairs.
        c.model.path = smollm2_path()
        s.epochs = 0.0
        _offline_pairs(c, max_input_length=128, max_target_length=32, max_new_tokens=40, eval_samples=16)
        run_preset(c, peak_lr=5e-4, warmup_steps=5, steps=60, every=30, eval_batches=4, eval_at_start=True,
                   log_every=5)
    return c


def _offline_pairs(c: ConfigDict, **summarize) -> None:
    """The offline docstring pairs instead of cnn_dailymail (validation: data.validation_fraction)."""
    c.data.hf_dataset = ""
    c.data.hf_config = ""
    c.summarize.validation_split = ""
    c.summarize.update(summarize)


def _demo(c: ConfigDict, smoke: bool) -> None:
    c.model.path = ""
    c.model.tokenizer = "demo:bpe:2048"
    c.model.random_init = ConfigDict(dict(
        model_type="qwen2", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=10000.0))
    # The document is the whole paragraph, so its summary (the first sentence) is in it and depends on it;
    # with the paragraph's body alone, 150 steps gave fluent text that scored below the best constant summary.
    _offline_pairs(c, max_input_length=64, max_target_length=24, max_new_tokens=24, greedy=True, eval_samples=48,
                   eval_batch_size=16, demo_document="paragraph")
    # A random model learns nothing through rank-16 adapters in minutes: train all weights.
    c.lora.rank = 0
    c.lora.dropout = 0.0
    c.summarize.epochs = 0.0
    run_preset(c, peak_lr=5e-3, warmup_steps=20, end_lr_ratio=0.1, batch_size=16, steps=500, every=250,
               eval_batches=4, eval_at_start=True, log_every=10)
    if smoke:
        c.model.random_init.update(dict(hidden_size=64, intermediate_size=128))
        c.lora.rank = 8
        c.summarize.update(dict(max_input_length=32, max_target_length=12, max_new_tokens=6, eval_samples=4,
                                eval_batch_size=4, scaling_report=False, demo_document="body"))
        c.data.max_records = 64
        run_preset(c, batch_size=4, steps=6, warmup_steps=1, every=3, eval_batches=1, eval_at_start=False,
                   log_every=1, peak_lr=3e-3)
