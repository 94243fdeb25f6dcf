"""The recipe contract, checked on every registered recipe's ``smoke`` preset through the public Trainer.

Build, two steps, resume from step 1 reproduces step 2's loss, the early-stopping metric is an eval
metric, and the export is written and reads back with the recipe's ``load_export``. The resumed run starts from
the straight run's own step-1 checkpoint, copied into a fresh workdir, so step 1 is trained once.
"""

import shutil

import numpy as np
import pytest

from jaxft.recipes import RECIPES, resolve
from tests.configs import recipe_config


def _config(name):
    c = recipe_config(name, "smoke")
    c.train.steps = 2
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.eval_at_start = False
    c.train.early_stopping.patience = 0
    c.checkpoint.every = 1
    c.checkpoint.async_save = False
    return c


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_contract(name, tmp_path):
    from jaxft.train.trainer import Trainer

    module = resolve(name)
    assert callable(getattr(module, "load_export", None)), f"{name} has no load_export(directory)"

    straight = Trainer(_config(name), tmp_path / "a", module.build)
    history = straight.run()
    losses = dict(history["train_loss"])
    assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
    metric = straight.config.train.early_stopping.metric
    step, metrics = history["eval"][-1]
    assert step == 2 and metric in metrics and np.isfinite(metrics[metric])
    assert (tmp_path / "a" / "config.json").is_file()

    export = straight.export()
    assert export is not None and any(export.rglob("*")), f"{name}: the export is empty"
    module.load_export(str(export))

    shutil.copytree(tmp_path / "a" / "checkpoints" / "1", tmp_path / "b" / "checkpoints" / "1")
    resumed = Trainer(_config(name), tmp_path / "b", module.build).run()
    assert [s for s, _ in resumed["train_loss"]] == [2]
    np.testing.assert_allclose(resumed["train_loss"][0][1], losses[2], rtol=1e-5)
