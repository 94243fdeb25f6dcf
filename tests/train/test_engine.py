"""The engine through its public API: a hand-built task, early stopping and the best export, resume with
EMA + dropout + accumulation, quantized bases, remat policies, sharded loading."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.data import Field, make_batches
from jaxft.train.task import TrainTask
from jaxft.train.trainer import Trainer
from tests.configs import ROOT, recipe_config


def _regression_task(scores=None, seen=None):
    """y = x·w_true; the trainable w starts at 0. ``scores`` scripts a host eval metric."""
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(4,)).astype(np.float32)
    records = [{"x": x, "y": np.float32(x @ w_true)} for x in rng.normal(size=(64, 4)).astype(np.float32)]
    fields = {"x": Field(shape=(4,), dtype="float32"), "y": Field(shape=(), dtype="float32"),
              "w": Field(shape=(), pad=0.0, dtype="float32")}

    def example(r):
        return {"x": r["x"], "y": r["y"], "w": np.float32(1.0)}

    def batches(**kw):
        return make_batches(records, example_fn=example, fields=fields, batch_size=8, shard_index=0,
                            shard_count=1, **kw)

    def loss_fn(trainable, frozen, batch, rng):
        err = (batch["x"] @ trainable["linear"]["w"] * frozen["scale"] - batch["y"]) ** 2
        return (err * batch["w"]).sum(), batch["w"].sum(), {"err_max": jnp.max(err)}

    evals = iter(scores or [])

    def host_eval_fn(trainable, frozen):
        if seen is not None:
            seen.append(np.asarray(trainable["linear"]["w"]).copy())
        return {"score": float(next(evals))} if scores else {}

    exported = {}

    def export_fn(directory, trainable, frozen):
        os.makedirs(directory, exist_ok=True)
        exported["w"] = np.asarray(trainable["linear"]["w"])
        np.save(os.path.join(directory, "w.npy"), exported["w"])

    task = TrainTask(trainable={"linear": {"w": jnp.zeros(4)}}, frozen={"scale": jnp.float32(1.0)}, loss_fn=loss_fn,
                     train_batches=batches(seed=1), eval_batches=lambda: batches(shuffle=False, num_epochs=1),
                     host_eval_fn=host_eval_fn, export_fn=export_fn, tokens_key="w")
    return task, exported


def _engine_config(steps=12, eval_every=3, lr=0.1):
    c = recipe_config("lm", "smoke")
    c.train.steps = steps
    c.train.log_every = 1
    c.train.eval_every = eval_every
    c.checkpoint.every = 100
    c.checkpoint.async_save = False
    c.optim.schedule.name = "constant"
    c.optim.schedule.peak_lr = lr
    c.optim.schedule.warmup_steps = 0
    return c


def test_a_hand_built_task_trains_through_the_public_trainer(tmp_path):
    task, _ = _regression_task()
    c = _engine_config(steps=40, eval_every=20, lr=0.03)
    c.train.eval_at_start = True
    history = Trainer(c, tmp_path, task).run()
    assert [s for s, _ in history["eval"]] == [0, 20, 40]
    losses = [loss for _, loss in history["train_loss"]]
    assert np.mean(losses[-5:]) < 0.05 * losses[0]
    assert history["eval"][-1][1]["loss"] < 0.1 * history["eval"][0][1]["loss"]
    assert "err_max" in history["eval"][-1][1]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 41))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 40


def test_early_stopping_keeps_and_exports_the_best_checkpoint(tmp_path):
    seen = []
    task, exported = _regression_task(scores=[0.2, 0.9, 0.5, 0.4, 0.95], seen=seen)
    c = _engine_config(steps=30)
    c.train.early_stopping.metric, c.train.early_stopping.mode, c.train.early_stopping.patience = "score", "max", 2
    trainer = Trainer(c, tmp_path, task)
    history = trainer.run()
    # evals at steps 3, 6, 9, 12: best 0.9 at step 6, then two evals without improvement
    assert [s for s, _ in history["eval"]] == [3, 6, 9, 12]
    assert history["stopped"]["step"] == 12 and history["best_step"] == 6
    trainer.export()
    assert trainer.exported_step == 6
    np.testing.assert_array_equal(exported["w"], seen[1])  # the params evaluated at step 6, not the last ones
    assert not np.array_equal(seen[1], seen[3])


def test_metric_names_of_the_step_are_refused(tmp_path):
    task, _ = _regression_task()
    original = task.loss_fn
    task.loss_fn = lambda t, f, b, r: (lambda out: (out[0], out[1], {"grad_norm": out[0]}))(original(t, f, b, r))
    with pytest.raises(ValueError, match=r"metrics named \['grad_norm'\]"):
        Trainer(_engine_config(steps=1), tmp_path, task).run()


def _lm_smoke(steps):
    c = recipe_config("lm", "smoke")
    c.train.steps = steps
    c.train.log_every = 1
    c.train.eval_every = 0
    c.checkpoint.every = 100
    c.checkpoint.async_save = False
    c.optim.schedule.peak_lr = 1e-2
    return c


@pytest.mark.slow
def test_resume_with_ema_dropout_and_accumulation_equals_an_uninterrupted_run(tmp_path):
    from jaxft.recipes.lm import build

    def config():
        c = _lm_smoke(4)
        c.optim.ema_decay = 0.9
        c.optim.eval_with_ema = True
        c.lora.dropout = 0.1
        c.optim.accum_steps = 2
        return c

    straight = Trainer(config(), tmp_path / "a", build)
    a = straight.run()
    Trainer(config(), tmp_path / "b", build).run(until_step=2)
    resumed = Trainer(config(), tmp_path / "b", build)
    b = resumed.run()
    np.testing.assert_allclose([x for _, x in b["train_loss"]], [x for _, x in a["train_loss"]][2:], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(resumed.state["ema"]), jax.tree.leaves(straight.state["ema"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    lora = jax.tree.leaves(straight.state["params"])
    ema = jax.tree.leaves(straight.state["ema"])
    assert any(not np.allclose(np.asarray(p), np.asarray(e)) for p, e in zip(lora, ema))  # the EMA is not the params


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_a_quantized_base_trains_like_its_dequantized_weights(fmt, tmp_path):
    from jaxft.quant.kernel import QuantizedKernel
    from jaxft.recipes.lm import build

    def config():
        c = _lm_smoke(3)
        c.model.quantize = fmt
        return c

    quantized = Trainer(config(), tmp_path / "q", build)

    def dequantized_build(config, mesh):
        task = build(config, mesh)
        task.frozen = jax.tree.map(lambda k: k.materialize(jnp.float32) if isinstance(k, QuantizedKernel) else k,
                                   task.frozen, is_leaf=lambda x: isinstance(x, QuantizedKernel))
        return task

    plain = Trainer(config(), tmp_path / "p", dequantized_build)
    assert any(isinstance(x, QuantizedKernel) for x in
               jax.tree.leaves(quantized.frozen, is_leaf=lambda x: isinstance(x, QuantizedKernel)))
    assert not any(isinstance(x, QuantizedKernel) for x in
                   jax.tree.leaves(plain.frozen, is_leaf=lambda x: isinstance(x, QuantizedKernel)))
    q, p = quantized.run(), plain.run()
    np.testing.assert_allclose([x for _, x in q["train_loss"]], [x for _, x in p["train_loss"]], rtol=2e-5)


def test_remat_policies_give_equal_loss_and_gradients():
    from jaxft.models.config import DecoderConfig
    from jaxft.models.decoder import forward
    from jaxft.models.init import init_params

    cfg = DecoderConfig.from_hf(dict(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                     max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True))
    params = init_params(cfg, jax.random.PRNGKey(0), jnp.float32)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 12)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 9:].set(0)

    def loss(p, remat):
        logits, _ = forward(cfg, p, ids, mask, remat=remat)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -(jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0] * mask[:, 1:]).sum()

    policies = ("none", "full", "save_dots", "save_proj")
    results = {r: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, r) for r in policies}
    base_loss, base_grads = results["none"]
    for remat in policies[1:]:
        value, grads = results[remat]
        np.testing.assert_allclose(float(value), float(base_loss), rtol=1e-6)
        for g, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(b), rtol=1e-5, atol=1e-6)


SHARDED_LOAD = """
import jax, numpy as np, sys
from jax.sharding import NamedSharding, PartitionSpec as P
import jaxft
mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"))
asked = {}
def sharding(path, shape):
    spec = P(*([None] * (len(shape) - 2) + ["fsdp", "tensor"])) if len(shape) >= 2 and shape[-2] % 4 == 0 and \\
        shape[-1] % 2 == 0 else P()
    asked["/".join(path)] = NamedSharding(mesh, spec)
    return asked["/".join(path)]
cfg, plain = jaxft.load_pretrained(sys.argv[1])
_, placed = jaxft.load_pretrained(sys.argv[1], sharding=sharding)
flat = jax.tree_util.tree_flatten_with_path(placed)[0]
assert len(flat) == len(asked), (len(flat), len(asked))
split = 0
for path, leaf in flat:
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    assert leaf.sharding == asked[key], key
    split += len(leaf.sharding.device_set) > 1 and leaf.sharding.spec != P()
for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(placed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
assert split > 0
print("ok", split)
"""


def test_load_pretrained_places_each_leaf_on_the_asked_sharding(tiny_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_LOAD, str(tiny_dir("qwen3"))], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


def test_eval_batches_caps_the_validation_batches(tmp_path):
    """train.eval_batches: the eval reads the first N batches of the task's eval stream (0: all of it)."""
    rng = np.random.default_rng(0)  # the records of _regression_task, in its unshuffled eval order
    w_true = rng.normal(size=(4,)).astype(np.float32)
    y = rng.normal(size=(64, 4)).astype(np.float32) @ w_true
    for cap, rows in ((2, 16), (0, 64)):
        task, _ = _regression_task()
        c = _engine_config(steps=1, eval_every=1)
        c.train.eval_at_start, c.train.eval_batches = True, cap
        history = Trainer(c, tmp_path / str(cap), task).run()
        step, metrics = history["eval"][0]
        assert step == 0 and metrics["loss"] == pytest.approx(float(np.mean(y[:rows].astype(np.float64) ** 2)),
                                                              rel=1e-5)
