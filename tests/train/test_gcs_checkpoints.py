"""``gs://`` checkpoint directories, against a local Cloud Storage endpoint (``tests/fake_gcs.py``): the
arrays go through tensorstore's ``gcs`` driver, the metadata through ``etils.epath`` and ``gcsfs``, the deletion
of old steps through ``google-cloud-storage``: the code paths a TPU VM takes against a real bucket."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.configs import recipe_config
from tests.fake_gcs import fake_gcs

BUCKET = "jaxft-test"


@pytest.fixture(scope="module")
def gcs():
    with pytest.MonkeyPatch.context() as mp, fake_gcs(mp, BUCKET) as url:
        yield url


def _objects(prefix: str) -> list[str]:
    from google.cloud import storage

    return sorted(b.name for b in storage.Client().list_blobs(BUCKET, prefix=prefix))


def test_steps_are_saved_rotated_and_restored_in_a_bucket(gcs):
    from jaxft.checkpoint.train_state import TrainCheckpointer

    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.array(0, jnp.int32)}
    writer = TrainCheckpointer(f"gs://{BUCKET}/rotate", max_to_keep=2, async_save=False)
    for step in (1, 2, 3):
        writer.save(step, {"w": state["w"] * step, "step": jnp.array(step, jnp.int32)})
    writer.close()
    assert {name.split("/")[1] for name in _objects("rotate/")} == {"2", "3"}  # step 1 is gone from the bucket

    reader = TrainCheckpointer(f"gs://{BUCKET}/rotate", read_only=True)
    assert reader.all_steps() == [2, 3]
    restored, _, _ = reader.restore(2, jax.tree.map(jnp.zeros_like, state))
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(6.0).reshape(2, 3) * 2)
    assert int(restored["step"]) == 2


def _smoke(checkpoint_dir: str, steps: int):
    c = recipe_config("lm", "smoke")
    c.train.steps, c.train.log_every, c.train.eval_every = steps, 1, 0
    c.checkpoint.dir, c.checkpoint.every, c.checkpoint.async_save = checkpoint_dir, 4, False
    c.optim.schedule.peak_lr = 1e-2
    return c


@pytest.mark.slow  # two smoke runs of the lm recipe: ~30 s
def test_a_run_resumes_from_its_bucket_with_the_losses_of_an_uninterrupted_one(gcs, tmp_path):
    """The resumed run starts from the straight run's own step-4 checkpoint, copied within the bucket."""
    from google.cloud import storage

    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer

    straight = Trainer(_smoke(f"gs://{BUCKET}/a", 8), tmp_path / "a", build).run()
    bucket = storage.Client().bucket(BUCKET)
    for name in _objects("a/4/"):
        bucket.copy_blob(bucket.blob(name), bucket, "b/" + name.removeprefix("a/"))
    resumed = Trainer(_smoke(f"gs://{BUCKET}/b", 8), tmp_path / "b", build).run()

    assert [s for s, _ in resumed["train_loss"]] == [5, 6, 7, 8]
    a = np.array([x for _, x in straight["train_loss"]])
    np.testing.assert_allclose([x for _, x in resumed["train_loss"]], a[4:], rtol=1e-6)
    assert {name.split("/")[1] for name in _objects("b/")} >= {"4", "8"}
