"""Shared fixtures: tiny random transformers checkpoints written to temp dirs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import pytest  # noqa: E402

# float32 matmuls at full precision on every backend (GPUs default to TF32), so the
# float32 parity bounds mean the same on CPU and GPU.
jax.config.update("jax_default_matmul_precision", "highest")

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(name) -> path of a saved tiny transformers model (cached per session)."""
    cache = {}

    def make(name: str):
        if name not in cache:
            cache[name] = tiny.save_tiny(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return make


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into scheduling groups
def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture (a trained run, a saved model) run on one xdist worker
    (``--dist loadgroup``), so each such fixture is built once rather than once per worker that meets it."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs if info is not None else {}
        if any(defs.get(name) and defs[name][-1].scope == "module" for name in item.fixturenames):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
