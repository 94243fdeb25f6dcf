"""notebooks/summarize.ipynb runs top to bottom (its last cell asserts on the numbers it computed)."""

import json

from tests.configs import ROOT


def test_summarize_notebook_runs(tmp_path, monkeypatch):
    path = ROOT / "notebooks" / "summarize.ipynb"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
    assert namespace["analysis"].params == 8.8e6
