"""notebooks/movielens.ipynb runs top to bottom (its last cell asserts on the prepared counts and the scores)."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[3] / "notebooks" / "movielens.ipynb"


def test_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, cell in enumerate(json.loads(NOTEBOOK.read_text())["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[cell {i}]", "exec"), namespace)
    assert namespace["report"]["n"] == 40
