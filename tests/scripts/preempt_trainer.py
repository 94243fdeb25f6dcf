"""One of two processes training the tiny lm config through the real ``Trainer``, for the preemption test:
SIGTERM reaches one process only, and both must stop at one agreed step through JAX's preemption sync point.

Usage: python preempt_trainer.py PROCESS_ID PORT WORKDIR OUT.json

It prints ``step N`` (flushed) as it takes the batch of each step, and sleeps a little per step so a signal
finds the run mid-way. On ``Preempted`` it writes the step it stopped at and the exit code to OUT.json.
"""

import json
import sys
import time

import jax

process_id, port, workdir, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from jaxft.recipes.lm import build  # noqa: E402
from jaxft.train.trainer import Preempted, Trainer  # noqa: E402
from tests.configs import recipe_config  # noqa: E402


class _Announced:
    """The training batches, announcing each step on stdout."""

    def __init__(self, batches):
        self.batches, self.step = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.step += 1
        print(f"step {self.step}", flush=True)
        time.sleep(0.2)
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


def announced_build(config, placement):
    task = build(config, placement)
    task.train_batches = _Announced(task.train_batches)
    return task


config = recipe_config("lm", "smoke")
config.train.steps, config.train.batch_size, config.train.log_every, config.train.eval_every = 10000, 4, 1, 0
config.checkpoint.every, config.checkpoint.async_save = 10000, False
config.data.seq_len, config.model.random_init.num_hidden_layers = 32, 1
try:
    Trainer(config, workdir, announced_build).run()
    result = {"stopped_at": None}
except Preempted as stop:
    result = {"stopped_at": int(str(stop).split("SIGTERM at step ")[1].split(":")[0]), "exit_code": stop.exit_code}
with open(out_path, "w") as f:
    json.dump(result, f)
