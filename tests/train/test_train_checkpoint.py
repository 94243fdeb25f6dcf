import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxft.checkpoint.train_state import CheckpointLayoutError, TrainCheckpointer
from jaxft.train import optim

REPO = Path(__file__).resolve().parents[2]


def _mesh():
    return jax.make_mesh((1,), ("data",))


def _state(seed=0, ema=False):
    """A realistic train state: sharded params, the grouped optax state, step and rng."""
    mesh = _mesh()
    rng = np.random.default_rng(seed)

    def put(shape, dtype, spec):
        return jax.device_put(jnp.asarray(rng.normal(size=shape), dtype), NamedSharding(mesh, spec))

    params = {"lora": {"a": put((8, 4), jnp.float32, P("data")), "b": put((4, 8), jnp.float32, P(None, "data"))},
              "head": {"bias": put((8,), jnp.bfloat16, P())}}
    tx = optim.make_optimizer(optim.default_config(), params, lambda path, leaf: path[0])
    opt_state = tx.init(params)
    _, opt_state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), opt_state, params)
    state = {"step": jnp.array(7, jnp.int32), "params": params, "opt_state": opt_state,
             "rng": jax.random.PRNGKey(seed), "key": jax.random.key(seed + 1)}
    if ema:
        state["ema"] = jax.tree.map(lambda x: x * 0.5, params)
    return state


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _assert_same(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
        if isinstance(want.sharding, NamedSharding):
            assert got.sharding.spec == want.sharding.spec


def test_round_trip_on_a_mesh_with_data_state_and_metadata(tmp_path):
    state = _state()
    with TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.save(7, state, data_state={"epoch": 1, "position": 1234},
                         metadata={"model": "tiny", "lora_rank": 4})
        ckpt.wait()
    reopened = TrainCheckpointer(tmp_path / "ckpt")
    assert reopened.latest_step() == 7 and reopened.all_steps() == [7]
    restored, data_state, metadata = reopened.restore(abstract_state=_abstract(state))
    _assert_same(restored, state)
    assert data_state == {"epoch": 1, "position": 1234}
    assert metadata == {"model": "tiny", "lora_rank": 4}
    # The target decides placement and dtype: read lora/a replicated and in bfloat16.
    target = _abstract(state)
    target["params"]["lora"]["a"] = jax.ShapeDtypeStruct((8, 4), jnp.bfloat16, sharding=NamedSharding(_mesh(), P()))
    recast, _, _ = reopened.restore(7, target)
    a = recast["params"]["lora"]["a"]
    assert a.dtype == jnp.bfloat16 and a.sharding.spec == P()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(state["params"]["lora"]["a"].astype(jnp.bfloat16)))
    reopened.close()


def test_async_save_survives_donated_buffers(tmp_path):
    """save() returns once arrays are off the device, so the next jitted step may donate them."""
    state = {"w": jnp.arange(12.0).reshape(3, 4)}
    with TrainCheckpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(1, state)
        state["w"].delete()  # what donating it to the next step does
        ckpt.wait()
        restored, _, _ = ckpt.restore(1, {"w": jax.ShapeDtypeStruct((3, 4), jnp.float32)})
    np.testing.assert_array_equal(restored["w"], np.arange(12.0).reshape(3, 4))


def test_json_items_are_optional_per_step(tmp_path):
    state = {"w": jnp.arange(3.0)}
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state, data_state={"position": 2})
        assert ckpt.restore(1, state)[1:] == (None, None)
        assert ckpt.restore(2, state)[1:] == ({"position": 2}, None)


def test_keep_last_k_plus_best(tmp_path):
    state = {"w": jnp.zeros(2)}
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.5, 6: 6.0}
    with TrainCheckpointer(tmp_path, max_to_keep=2, best_metric="eval_loss", async_save=False) as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, state, metrics={"eval_loss": jnp.float32(loss), "accuracy": 0.5})
        assert ckpt.all_steps() == [2, 5, 6]
        assert ckpt.best_step() == 2
        ckpt.save(7, state)  # no eval at this step: kept as recent, never as best
        assert ckpt.all_steps() == [2, 6, 7]
        with pytest.raises(KeyError, match="eval_loss"):
            ckpt.save(8, state, metrics={"loss": 1.0})
    reopened = TrainCheckpointer(tmp_path, max_to_keep=2, best_metric="eval_loss")
    assert reopened.best_step() == 2 and reopened.latest_step() == 7
    reopened.close()


def test_keep_best_by_max(tmp_path):
    state = {"w": jnp.zeros(2)}
    with TrainCheckpointer(tmp_path, max_to_keep=1, best_metric="accuracy", best_mode="max",
                           async_save=False) as ckpt:
        for step, acc in enumerate([0.1, 0.9, 0.3, 0.2], start=1):
            ckpt.save(step, state, metrics={"accuracy": acc})
        assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2


def test_keep_last_k_without_best(tmp_path):
    with TrainCheckpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, {"w": jnp.full(2, step)})
        assert ckpt.all_steps() == [3, 4] and ckpt.best_step() is None


def test_save_interval_force_and_repeated_step(tmp_path):
    with TrainCheckpointer(tmp_path, save_interval_steps=5, async_save=False) as ckpt:
        state = {"w": jnp.zeros(2)}
        assert ckpt.save(5, state)
        assert not ckpt.save(6, state)
        assert not ckpt.save(5, state, force=True)  # already saved: a final save may repeat it
        assert ckpt.save(7, state, force=True)
        assert ckpt.all_steps() == [5, 7]


_CHILD = textwrap.dedent("""
    import sys
    import jax
    import jax.numpy as jnp
    from jaxft.checkpoint.train_state import TrainCheckpointer
    ckpt = TrainCheckpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.arange(4.0)}, data_state={"position": 1})
    ckpt.wait()
    big = {"w": jax.random.uniform(jax.random.key(0), (50, 1024, 1024))}  # 200 MB that does not compress
    big["w"].block_until_ready()
    print("saving", flush=True)
    ckpt.save(2, big)
    ckpt.wait()
    print("committed", flush=True)
""")


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "saving"
        deadline, partial = time.monotonic() + 30, None
        while time.monotonic() < deadline and child.poll() is None:
            partial = next((p for p in directory.iterdir() if "tmp" in p.name), None)
            if partial is not None and _tree_bytes(partial) > 20 * 2**20:  # well into the 200 MB write
                break
            time.sleep(0.005)
        assert child.poll() is None, "the save finished before it could be interrupted"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert partial is not None and partial.exists() and not (directory / "2").exists()

    with TrainCheckpointer(directory, async_save=False) as ckpt:
        assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
        deadline = time.monotonic() + 20  # opening starts a background clean-up of unfinished saves
        while partial.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not partial.exists()
        state, data_state, _ = ckpt.restore(abstract_state={"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
        np.testing.assert_array_equal(state["w"], np.arange(4.0))
        assert data_state == {"position": 1}
        assert ckpt.save(2, {"w": jnp.ones(3)})  # the interrupted step can be written again
        assert ckpt.all_steps() == [1, 2]


def test_read_only_reader_follows_a_writer_and_leaves_its_saves_alone(tmp_path):
    with TrainCheckpointer(tmp_path, async_save=False) as writer:
        writer.save(1, {"w": jnp.zeros(2)})
        in_progress = tmp_path / "2.orbax-checkpoint-tmp"  # what a save under way looks like
        in_progress.mkdir()
        reader = TrainCheckpointer(tmp_path, read_only=True)
        assert reader.latest_step() == 1
        time.sleep(0.5)  # a writable checkpointer would have deleted it by now
        assert in_progress.exists()
        in_progress.rmdir()
        writer.save(3, {"w": jnp.ones(2)})
        assert reader.latest_step() == 3
        restored, _, _ = reader.restore(abstract_state={"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
        np.testing.assert_array_equal(restored["w"], [1.0, 1.0])
        with pytest.raises(PermissionError, match="read-only"):
            reader.save(4, {"w": jnp.ones(2)})
        reader.close()


def test_layout_change_names_the_paths(tmp_path):
    state = _state()
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
        changed = _abstract(state)
        changed["params"]["lora"]["c"] = changed["params"]["lora"].pop("b")
        changed["params"]["head"]["bias"] = jax.ShapeDtypeStruct((16,), jnp.bfloat16)
        with pytest.raises(CheckpointLayoutError) as err:
            ckpt.restore(1, changed)
    message = str(err.value)
    assert "requested but not in the checkpoint (1):\n    params/lora/c" in message
    assert "in the checkpoint but not requested (1):\n    params/lora/b" in message
    assert "params/head/bias: saved (8,), requested (16,)" in message
    assert "optional_keys" in message


def test_optional_top_level_keys_on_either_side(tmp_path, caplog):
    plain, with_ema = _state(), _state(ema=True)
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, plain)
        ckpt.save(2, with_ema)
        # A run that enabled EMA resumes from a checkpoint without it.
        with pytest.raises(CheckpointLayoutError, match="ema/lora/a"):
            ckpt.restore(1, _abstract(with_ema))
        with caplog.at_level(logging.WARNING, logger="jaxft.checkpoint.train_state"):
            restored, _, _ = ckpt.restore(1, _abstract(with_ema), optional_keys=("ema",))
        assert "ema" not in restored and "no ['ema']" in caplog.text
        _assert_same(restored, plain)
        # A run that disabled EMA resumes from a checkpoint with it.
        restored, _, _ = ckpt.restore(2, _abstract(plain), optional_keys=("ema",))
        _assert_same(restored, {k: v for k, v in with_ema.items() if k != "ema"})


def test_wrong_paths_and_steps_raise_file_not_found(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        TrainCheckpointer(missing).restore()
    assert not missing.exists()  # looking did not create it
    assert TrainCheckpointer(missing).latest_step() is None

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
        TrainCheckpointer(empty).restore()

    with TrainCheckpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(3, {"w": jnp.zeros(2)})
        with pytest.raises(FileNotFoundError, match=r"step 4 .* saved steps: \[3\]"):
            ckpt.restore(4)
    with pytest.raises(FileNotFoundError, match="single step directory"):
        TrainCheckpointer(tmp_path / "run" / "3").restore()


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from jaxft.checkpoint.train_state import TrainCheckpointer

    monkeypatch.chdir(tmp_path)
    ck = TrainCheckpointer("runs/relative", async_save=False)
    ck.save(1, {"w": jnp.arange(4.0)}, force=True)
    ck.wait()
    state, _, _ = ck.restore(1)
    assert (tmp_path / "runs" / "relative" / "1").is_dir()
    assert float(state["w"][3]) == 3.0
