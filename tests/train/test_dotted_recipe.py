"""``config.recipe`` as a dotted module path: ``python -m jaxft.main`` imports that module and calls its
``build(config, placement)``; a path that does not import, or a module without ``build``, is one line."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.configs import ROOT

CONFIG = """
from configs.lm import get_config as lm_config


def get_config(preset=None):
    c = lm_config("smoke")
    c.recipe = {recipe!r}
    return c
"""

RECIPE = """
def build(config, placement):
    # proof of the call: what it was given, in the one-line error the CLI prints
    raise ValueError(f"own recipe built: seq_len {config.data.seq_len}, {placement.mesh.size} device(s)")
"""


def _main(tmp_path, recipe: str) -> subprocess.CompletedProcess:
    (tmp_path / "own_recipes").mkdir(exist_ok=True)
    (tmp_path / "own_recipes" / "__init__.py").write_text("")
    (tmp_path / "own_recipes" / "echo.py").write_text(textwrap.dedent(RECIPE))
    (tmp_path / "own_recipes" / "nobuild.py").write_text("X = 1\n")
    (tmp_path / "own.py").write_text(textwrap.dedent(CONFIG.format(recipe=recipe)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "jaxft.main", "--config", str(tmp_path / "own.py"),
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("recipe, message", [
    ("own_recipes.echo", "error: own recipe built: seq_len 64, 1 device(s)"),
    ("own_recipes.missing", "error: config key 'recipe': cannot import module 'own_recipes.missing'"),
    ("own_recipes.nobuild", "error: config key 'recipe': module 'own_recipes.nobuild' has no build(config, placement)"),
])
def test_a_dotted_recipe_module_is_imported_and_built(tmp_path, recipe, message):
    proc = _main(tmp_path, recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [message], proc.stderr
