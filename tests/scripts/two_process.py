"""One process of a two-process run: a sharded step, then a joint save and restore.

Usage: python two_process.py PROCESS_ID PORT CKPT_DIR OUT.npz [STEPS]
PROCESS_ID -1 runs the same step alone on one device, as the reference.

With STEPS, it trains like a preemptible job instead: it resumes from the latest checkpoint in
CKPT_DIR, takes a different batch each step (a function of the step, so a resumed run sees what
an uninterrupted one would), checkpoints every 5 steps, and on SIGTERM (to any of the processes)
all processes agree on one step through jax's preemption sync point, save it, and exit 0.
OUT.npz then holds the steps it trained and their losses, and the step it stopped at.
"""

import sys
import time

import jax

process_id, port, ckpt_dir, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
train_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 0
alone = process_id < 0
if not alone:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxft.checkpoint.train_state import TrainCheckpointer  # noqa: E402
from jaxft.models.config import DecoderConfig  # noqa: E402
from jaxft.models.decoder import forward, lm_head_weight  # noqa: E402
from jaxft.models.init import init_params  # noqa: E402
from jaxft.train import mesh as mesh_lib  # noqa: E402
from jaxft.train.loss import causal_lm_loss, next_token_targets  # noqa: E402
from jaxft.train.sharding import tree_shardings  # noqa: E402
from jaxft.train.step import init_state, jit_step, make_step_fn  # noqa: E402
from jaxft.train.trainer import global_batch  # noqa: E402

assert alone or (jax.process_count() == 2 and jax.device_count() == 2)
cfg = DecoderConfig.from_hf(dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
params = {"model": init_params(cfg, jax.random.PRNGKey(0))}
rng = np.random.default_rng(0)
ids = rng.integers(0, 256, (4, 16)).astype(np.int32)
rows = slice(None) if alone else slice(process_id * 2, (process_id + 1) * 2)
local = {"input_ids": ids[rows], "loss_mask": np.ones_like(ids[rows])}


def loss_fn(t, f, b, key):
    hidden, _ = forward(cfg, t["model"], b["input_ids"], output="hidden")
    targets, mask = next_token_targets(b["input_ids"], b["loss_mask"])
    out = causal_lm_loss(hidden, lm_head_weight(cfg, t["model"], jnp.float32), targets, mask)
    return out.loss_sum, out.weight_sum, {}


mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
rules = mesh_lib.DEFAULT_RULES
optimizer = optax.adamw(1e-2)
state = init_state(params, optimizer, 0, ema=False)
s_sh = tree_shardings(jax.eval_shape(lambda: state), mesh, rules)
state = jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i, x=x: np.asarray(x)[i]),
                     state, s_sh)
batch = global_batch(local, mesh, rules)
step = jit_step(make_step_fn(loss_fn, optimizer), s_sh, {}, jax.tree.map(lambda x: x.sharding, batch))


def batch_of_step(n: int) -> dict:
    ids = np.random.default_rng(1000 + n).integers(0, 256, (4, 16)).astype(np.int32)
    return global_batch({"input_ids": ids[rows], "loss_mask": np.ones_like(ids[rows])}, mesh, rules)


if train_steps:
    from jax.experimental import multihost_utils

    ckpt = TrainCheckpointer(ckpt_dir, max_to_keep=2, async_save=False)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    start = ckpt.latest_step() or 0
    if start:
        state, data_state, _ = ckpt.restore(start, abstract)
        assert data_state == {"next_step": start + 1}, data_state
    done, losses, stopped_at = [], [], None
    for n in range(start + 1, train_steps + 1):
        state, metrics = step(state, {}, batch_of_step(n))
        done.append(n)
        losses.append(float(metrics["loss"]))
        print(f"step {n}", flush=True)
        # Every process asks at every step; after a SIGTERM reaches any of them, all get True at the
        # same step (a process-local flag could make one process save while the other steps on).
        if multihost_utils.reached_preemption_sync_point(n):
            ckpt.save(n, state, data_state={"next_step": n + 1}, force=True)
            stopped_at = n
            break
        if n % 5 == 0:
            ckpt.save(n, state, data_state={"next_step": n + 1}, force=True)
        time.sleep(0.05)  # a slow step, so the test can signal mid-run
    ckpt.wait()
    ckpt.close()
    np.savez(out_path, steps=np.array(done), losses=np.array(losses), start=start,
             stopped_at=-1 if stopped_at is None else stopped_at)
    sys.exit(0)

losses = []
for _ in range(2):
    state, metrics = step(state, {}, batch)
    losses.append(float(metrics["loss"]))

if alone:
    np.savez(out_path, losses=np.array(losses))
    sys.exit(0)
ckpt = TrainCheckpointer(ckpt_dir, max_to_keep=2, async_save=False)
ckpt.save(2, state, data_state={"position": 2 + process_id}, metadata={"who": "both"}, force=True)
ckpt.wait()
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
restored, data_state, metadata = ckpt.restore(2, abstract)
same = all(np.array_equal(np.asarray(a.addressable_data(0)), np.asarray(b.addressable_data(0)))
           for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)))
ckpt.close()
np.savez(out_path, losses=np.array(losses), restored_equal=same, process=process_id)
