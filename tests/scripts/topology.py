"""One process of an lm-recipe training run on 1 or 2 processes (one CPU device each), for the
topology test: the losses must not depend on how many processes run.

Usage: python topology.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT.npz STEPS [UNTIL_STEP]

It trains the tiny lm config for STEPS (resuming from WORKDIR's checkpoints; stopping and
checkpointing at UNTIL_STEP when given) and writes the logged (step, loss) pairs to OUT.npz.
"""

import sys

import jax

process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
workdir, out_path, steps = sys.argv[4], sys.argv[5], int(sys.argv[6])
until = int(sys.argv[7]) if len(sys.argv) > 7 else None
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402

from jaxft.recipes.lm import build  # noqa: E402
from jaxft.train.trainer import Trainer  # noqa: E402
from tests.configs import recipe_config  # noqa: E402

assert jax.process_count() == num_processes and jax.device_count() == num_processes
config = recipe_config("lm", "smoke")
config.train.steps = steps
config.train.batch_size = 4  # global: 2 rows per process on two processes
config.train.log_every = 1
config.train.eval_every = 0
config.checkpoint.every = 1000
config.checkpoint.async_save = False
config.data.seq_len = 32
config.model.random_init.num_hidden_layers = 1
config.optim.schedule.peak_lr = 1e-2
history = Trainer(config, workdir, build).run(until_step=until)
losses = np.array([loss for _, loss in history["train_loss"]])
np.savez(out_path, steps=np.array([s for s, _ in history["train_loss"]]), losses=losses)
