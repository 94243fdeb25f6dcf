"""Config sections shared by every recipe (ml_collections).

Recipe configs under ``configs/`` start from ``base_config()`` and add their
own section; ``python -m jaxft.main --config configs/<recipe>.py:<preset>``
loads them, and ``--config.a.b=value`` overrides any key (types are checked).
"""

from __future__ import annotations

from ml_collections import ConfigDict, FieldReference

from jaxft.train.optim import default_config as optim_defaults


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.recipe = ""
    c.seed = 0

    c.mesh = ConfigDict()
    c.mesh.shape = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.rules = ConfigDict()  # logical axis -> mesh axis overrides, e.g. {"embed": "fsdp"}

    steps = FieldReference(100)
    c.optim = optim_defaults()  # schedule, AdamW betas/eps, weight decay, clipping, groups
    c.optim.schedule.total_steps = steps
    c.optim.schedule.warmup_steps = 10
    c.optim.schedule.end_lr_ratio = 0.1
    c.optim.accum_steps = 1
    c.optim.ema_decay = 0.0  # > 0 keeps an EMA of the trainable params
    c.optim.eval_with_ema = False

    c.train = ConfigDict()
    c.train.steps = steps
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_batches = 4
    c.train.eval_at_start = False  # eval (and samples) before the first step: a "before" reference
    c.train.early_stopping = ConfigDict({"metric": "loss", "mode": "min", "patience": 0})

    c.checkpoint = ConfigDict()
    c.checkpoint.dir = ""  # default: <workdir>/checkpoints; gs:// URLs work
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.loss = ConfigDict()
    c.loss.chunk_size = 1024  # tokens per logits chunk; 0 materialises full logits

    c.logging = ConfigDict()
    c.logging.wandb = False  # also log to Weights & Biases (needs `pip install wandb`)
    c.logging.wandb_project = "jaxft"
    return c
