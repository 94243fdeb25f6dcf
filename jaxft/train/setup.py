"""What the trainer sets up before the first step: a checked workdir, the trees on their
shardings, the optimizer and the initial train state."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxft.settings import CheckpointSettings, Settings
from jaxft.train import mesh as mesh_lib
from jaxft.train.sharding import tree_shardings
from jaxft.train.step import init_state, make_step_fn
from jaxft.train.task import TrainTask


def prepare_workdir(workdir: str | Path, checkpoint: CheckpointSettings, is_main: bool) -> Path:
    """The workdir, absolute, checked writable (and its checkpoint directory) and locked by process 0.
    Checked before the model loads: a bad workdir should cost seconds, not a model load."""
    from jaxft.train.workdir import acquire_lock, check_writable

    workdir = check_writable(workdir).resolve()
    ck_dir = checkpoint.dir or str(workdir / "checkpoints")
    if "://" not in ck_dir:
        check_writable(ck_dir, "checkpoint directory")
    if is_main:
        acquire_lock(workdir)
    return workdir


def place(tree, shardings):
    """``tree`` on ``shardings``; leaves already there (a loader streamed them onto their placement) stay put."""
    def put(x, s):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim):
            return x
        return jax.device_put(x, s)

    return jax.tree.map(put, tree, shardings)


def global_batch(batch: dict, mesh, rules) -> dict:
    """Host batch (this process's rows) -> global arrays sharded over the batch axes."""
    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = mesh_lib.batch_sharding(mesh, rules, global_shape)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return {k: put(v) for k, v in batch.items()}


@dataclasses.dataclass
class Placed:
    """The task's trees on the mesh, with the optimizer, the train state and the (unjitted) step."""

    frozen: Any
    frozen_sh: Any
    trainable_sh: Any
    optimizer: Any
    state: dict
    state_sh: dict
    step_fn: Any


def place_task(task: TrainTask, settings: Settings, mesh, rules: dict) -> Placed:
    from jaxft.train.optim import make_optimizer  # (a heavy import, kept local)

    trainable_sh = tree_shardings(task.trainable, mesh, rules, task.trainable_axes)
    frozen_sh = tree_shardings(task.frozen, mesh, rules, task.frozen_axes)
    frozen = place(task.frozen, frozen_sh)
    trainable = place(task.trainable, trainable_sh)
    optim = settings.optim
    optimizer = make_optimizer(optim, trainable, task.group_fn, task.no_decay)
    use_ema = optim.ema_decay > 0

    def initial(p):
        return init_state(p, optimizer, settings.seed, use_ema)

    state_sh = tree_shardings(jax.eval_shape(initial, trainable), mesh, rules)
    state_sh["params"] = trainable_sh
    if use_ema:
        state_sh["ema"] = trainable_sh
    state = jax.jit(initial, out_shardings=state_sh)(trainable)
    step_fn = make_step_fn(task.loss_fn, optimizer, accum_steps=optim.accum_steps,
                           ema_decay=optim.ema_decay or 0.999)
    return Placed(frozen, frozen_sh, trainable_sh, optimizer, state, state_sh, step_fn)
