"""The typed config sections: one default per key, casts that name the key, epochs resolved into steps."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxft.config import base_config, run_preset
from jaxft.errors import ConfigError
from jaxft.settings import Settings, parse_settings, resolve_epochs
from jaxft.train import optim
from jaxft.train.task import data_fingerprint

ENGINE_SECTIONS = ("train", "optim", "checkpoint", "mesh", "loss", "export", "logging")


def _leaves(section, prefix):
    """Every (dotted key, default) of a typed section; a mapping-valued key is one leaf."""
    for f in dataclasses.fields(section):
        value, dotted = getattr(section, f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, dotted)
        else:
            yield dotted, value


def _delete(config: ConfigDict, dotted: str) -> ConfigDict:
    config = ConfigDict(config.to_dict())
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    del node[leaf]
    return config


def _get(settings, dotted: str):
    for part in dotted.split("."):
        settings = settings[part] if hasattr(settings, "keys") else getattr(settings, part)
    return settings


def test_base_config_holds_exactly_the_typed_defaults():
    base = base_config()
    assert parse_settings(base) == Settings()
    assert {k for k in base} == {f.name for f in dataclasses.fields(Settings)}
    # the values the fallbacks once disagreed on
    defaults = Settings()
    assert defaults.optim.max_grad_norm == 1.0 and defaults.train.max_skipped_updates == 10
    assert (defaults.optim.schedule.warmup_steps, defaults.optim.schedule.end_lr_ratio) == (10, 0.1)


@pytest.mark.parametrize("section", ENGINE_SECTIONS)
def test_a_missing_key_takes_the_same_default_as_base_config(section):
    base = base_config()
    for dotted, default in _leaves(getattr(Settings(), section), section):
        in_base = _get(base, dotted)
        assert (in_base.to_dict() if hasattr(in_base, "to_dict") else in_base) == default, dotted
        assert _get(parse_settings(_delete(base, dotted)), dotted) == default, dotted


def test_an_optimizer_config_without_max_grad_norm_clips_at_the_default():
    cfg = optim.default_config()
    cfg.schedule.update(dict(name="constant", peak_lr=1.0, warmup_steps=0))
    cfg.b1, cfg.b2, cfg.eps = 0.0, 0.0, 1.0
    del cfg["max_grad_norm"]
    params = {"w": jnp.zeros((2,))}
    tx = optim.make_optimizer(cfg, params)
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
    clipped = np.array([0.6, 0.8])  # clipped to norm 1.0, not left at norm 50
    np.testing.assert_allclose(updates["w"], -clipped / (clipped + 1.0), rtol=1e-6)


@pytest.mark.parametrize("dotted, value, expected", [
    ("train.steps", "many", "config key 'train.steps' must be a whole number, got 'many'"),
    ("train.eval_every", True, "config key 'train.eval_every' must be a whole number, got True"),
    ("train.batch_size", 2.5, "config key 'train.batch_size' must be a whole number, got 2.5"),
    ("optim.schedule.peak_lr", "1e-3", "config key 'optim.schedule.peak_lr' must be a number, got '1e-3'"),
    ("checkpoint.async_save", 1, "config key 'checkpoint.async_save' must be true or false, got 1"),
    ("export.source", 3, "config key 'export.source' must be a string, got 3"),
    ("mesh.shape", "data", "config key 'mesh.shape' must be a mapping, got 'data'"),
    ("loss", 5, "config key 'loss' must be a section, got 5"),
])
def test_a_value_of_the_wrong_type_names_its_key(dotted, value, expected):
    config = base_config().to_dict()
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError) as info:
        parse_settings(ConfigDict(config))
    assert str(info.value) == expected


def test_whole_floats_and_ints_are_cast():
    c = base_config()
    c.optim.schedule.peak_lr = 1  # an int where a float is declared
    config = c.to_dict()
    config["train"]["eval_every"] = 20.0
    settings = parse_settings(ConfigDict(config))
    assert settings.train.eval_every == 20 and isinstance(settings.train.eval_every, int)
    assert settings.optim.schedule.peak_lr == 1.0 and isinstance(settings.optim.schedule.peak_lr, float)


def test_epochs_become_steps_and_the_warmup_follows():
    c = base_config()
    c.train.epochs, c.train.batch_size = 2.0, 4
    c.optim.schedule.warmup_ratio = 0.3
    settings = parse_settings(c)
    assert settings.train.steps == 100  # not resolved before the task counts its records
    resolved = resolve_epochs(c, settings, train_records=10)
    assert resolved.train.steps == 5 == resolved.optim.schedule.total_steps  # ceil(2 * 10 / 4)
    assert resolved.optim.schedule.warmup_steps == 2  # ceil(0.3 * 5)
    # written back: the saved config and its reader see the steps the run takes
    assert (int(c.train.steps), int(c.optim.schedule.total_steps), int(c.optim.schedule.warmup_steps)) == (5, 5, 2)
    assert resolve_epochs(c, parse_settings(c), train_records=1).train.steps == 1  # never below one step


def test_without_epochs_steps_stay_and_the_warmup_ratio_still_applies():
    c = base_config()
    c.train.steps = 40
    c.optim.schedule.warmup_ratio = 0.03
    settings = parse_settings(c)
    assert resolve_epochs(c, settings, train_records=None) is settings
    assert (settings.train.steps, settings.optim.schedule.warmup_steps) == (40, 2)  # ceil(0.03 * 40)


def test_epochs_need_a_recipe_that_counts_its_records():
    c = base_config()
    c.train.epochs = 1.0
    with pytest.raises(ConfigError, match="'train.epochs' is set, but this recipe does not count"):
        resolve_epochs(c, parse_settings(c), train_records=None)


def test_run_preset_sets_the_named_engine_keys():
    c = run_preset(base_config(), steps=6, batch_size=4, every=3, peak_lr=1e-2, eval_at_start=True)
    assert (int(c.train.steps), int(c.optim.schedule.total_steps), c.train.batch_size) == (6, 6, 4)
    assert (c.train.eval_every, c.checkpoint.every, c.optim.schedule.peak_lr, c.train.eval_at_start) == (
        3, 3, 1e-2, True)
    assert c.train.log_every == base_config().train.log_every  # keys left out keep their value
    c = run_preset(c, every=4, checkpoint_every=8)
    assert (c.train.eval_every, c.checkpoint.every) == (4, 8)
    with pytest.raises(TypeError, match="unknown key 'stesp'"):
        run_preset(c, stesp=3)


def test_the_data_fingerprint_names_where_records_come_from():
    from jaxft.config import data_section

    data = data_section(path="a.jsonl", text_column="body")
    assert data_fingerprint(data) == {"path": "a.jsonl", "hf_dataset": "", "hf_config": "", "hf_split": "train"}
    assert data_fingerprint(None) is None


def test_the_config_file_runs_once_per_start(tmp_path):
    import os
    import subprocess
    import sys

    from tests.configs import ROOT

    config_file = tmp_path / "counted.py"
    config_file.write_text(
        "from pathlib import Path\n"
        "from jaxft.config import load_config_file\n\n"
        "def get_config(preset='smoke'):\n"
        f"    with open({str(tmp_path / 'runs.txt')!r}, 'a') as f:\n"
        "        f.write('ran\\n')\n"
        f"    return load_config_file({str(ROOT / 'configs' / 'lm.py')!r} + ':' + preset)\n")
    # train.steps=0 is refused before anything is built: the start is all this run does
    proc = subprocess.run([sys.executable, "-m", "jaxft.main", "--config", f"{config_file}:smoke",
                           "--config.train.steps=0", "--workdir", str(tmp_path / "run")], cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "'train.steps' must be positive" in proc.stderr, proc.stderr
    assert (tmp_path / "runs.txt").read_text() == "ran\n"
