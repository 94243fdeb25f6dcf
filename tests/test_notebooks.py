"""Every notebook runs top to bottom (code cells executed in order, no Jupyter needed); each one ends with
assertions on what it computed."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SLOW = {"embedllm.ipynb"}  # over 30 s on an idle 2-core machine


def _param(path: Path):
    return pytest.param(path, id=path.name, marks=[pytest.mark.slow] if path.name in SLOW else [])


def test_every_recipe_has_a_notebook():
    from jaxft.recipes import RECIPES

    names = {p.stem for p in NOTEBOOKS}
    assert names >= set(RECIPES) - {"lm"}  # lm is the quickstart's


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert "assert " in "".join(cells[-1]["source"]), f"{path.name}: its last cell checks nothing"
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
